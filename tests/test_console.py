"""What a person sees: `oncoplan contour|plan` print one line per stage and a closing summary, `-v`
everything; no line carries a UID; the graph runs with the stack Holoscan asks for; every command and
entry point answers --help (issue 33, point 4)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from oncoplan.apps.console import plan_summary

from .helpers import cohort_rows

UID = re.compile(r"\b\d+\.\d+\.\d+\.\d+\.\d+")
NOISE = ("stack size", "[info]", "[warning]", "Warning", "nvimgcodec", "nvImageCodec", "CUDA", "Loading weights")


def _oncoplan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oncoplan", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.integration
def test_contour_prints_a_line_per_stage_and_a_summary_and_v_prints_everything(
    breast_cohort: Path, tmp_path: Path
) -> None:
    case = cohort_rows(breast_cohort)[0]["case_id"]
    study = breast_cohort / case / "dicom"
    quiet = _oncoplan("contour", "-i", str(study), "-o", str(tmp_path / "quiet"))
    assert quiet.returncode == 0, quiet.stderr
    lines = quiet.stderr.splitlines()
    assert all(re.match(r"^ *\d+\.\d s  \S", line) for line in lines), quiet.stderr  # each with its time
    assert len(lines) <= 8, quiet.stderr
    assert not [n for n in NOISE if n in quiet.stderr], quiet.stderr
    assert any("CT series chosen" in line for line in lines) and any("U-Net on" in line for line in lines)
    summary = re.search(r"^CTV: ([\d.]+) cm3, (left|right|left and right) \(conditioned on: .+\)$", quiet.stdout, re.M)
    assert summary and float(summary.group(1)) > 0, quiet.stdout
    assert quiet.stdout.rstrip().endswith("RESEARCH USE ONLY - not for clinical use.")

    loud = _oncoplan("-v", "contour", "-i", str(study), "-o", str(tmp_path / "loud"))
    assert loud.returncode == 0, loud.stderr
    assert "[info]" in loud.stderr and "(highdicom" in loud.stderr  # Holoscan's C++ logger, the libraries
    assert "passed over" in loud.stderr or "CT series chosen" in loud.stderr
    assert "stack size" not in loud.stderr  # the cause removed, not the warning hidden
    for out in (quiet, loud):
        assert not UID.search(out.stderr), [line for line in out.stderr.splitlines() if UID.search(line)][:3]


def test_the_plan_summary_says_the_protocol_its_risk_and_each_contraindication(tmp_path: Path) -> None:
    plan = {
        "best": {"protocol": "Doxorubicin; Lipiodol", "mean_risk": -0.25},
        "ranked": [{}, {}, {}],
        "pick": "world model",
        "contraindications": [{"level": "contraindication", "code": "child_pugh_c", "text": "Child-Pugh C (given)"}],
        "cautions": [],
        "clinical": {"model_covariates": {"log10 AFP": {"imputed": True}, "Child-Pugh": {"imputed": False}}},
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert plan_summary([tmp_path / "plan.json"]) == [
        "plan: Doxorubicin; Lipiodol (mean predicted risk -0.250, best of 3 protocols; picked by world model)",
        "contraindications: Child-Pugh C (given)",
        "cautions: none flagged",
        "clinical data imputed with the training median: log10 AFP",
    ]


def test_an_entry_point_raises_the_stack_to_what_holoscan_asks_for() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft == resource.RLIM_INFINITY or (hard != resource.RLIM_INFINITY and hard < 32 * 1024 * 1024):
        pytest.skip(f"this machine's stack limits ({soft}, {hard}) leave nothing to raise")
    code = (
        "import resource, sys\n"
        "from oncoplan.runtime.stack import ensure_holoscan_stack\n"
        "ensure_holoscan_stack()\n"
        "print(resource.getrlimit(resource.RLIMIT_STACK)[0], sys.argv[1:])\n"
    )
    out = subprocess.run([sys.executable, "-c", code, "a", "b"], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split(maxsplit=1) == [str(32 * 1024 * 1024), "['a', 'b']\n"], out  # arguments kept


def test_every_command_answers_help() -> None:
    from oncoplan.cli import build_parser

    commands = [[]] + [[name] for name in build_parser()._subparsers._group_actions[0].choices]
    commands += [["evaluate", "tace"]]
    for command in commands:
        out = _oncoplan(*command, "--help")
        assert out.returncode == 0 and out.stdout.startswith("usage:"), (command, out.stderr[-500:])
    entry_points = [
        ["-m", "oncoplan.monai_deploy", "--help"],
        ["-m", "oncoplan.monai_deploy", "exec", "--help"],
        ["-m", "oncoplan.monai_deploy", "exec", "ctv_contouring", "--help"],
        ["-m", "oncoplan.apps.tace_planner", "--help"],
        ["-m", "oncoplan.deploy.listener.warm_worker", "--help"],
        ["-m", "oncoplan.deploy.listener.processes", "--help"],
    ]
    for args in entry_points:
        out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and "usage:" in out.stdout, (args, out.stderr[-500:])
        assert "stack size" not in out.stderr, args
