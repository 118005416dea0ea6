"""Pooling planner evaluations (`python -m oncoplan.training.planner.pool`) on a shipped report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parents[1] / "training" / "planner" / "docs"
GATED = DOCS / "planning_evaluation_heldout_int24_gated.json"


def test_pooled_report_is_the_mean_over_every_case(tmp_path: Path) -> None:
    other = json.loads(GATED.read_text())
    other["cohort"] = "second"
    for case in other["cases"]:  # a second cohort whose planner lost one month more on every case
        case["methods"]["world_model"]["regret_months"] += 1.0
    (tmp_path / "b.json").write_text(json.dumps(other))
    cmd = [sys.executable, "-m", "oncoplan.training.planner.pool", str(GATED), str(tmp_path / "b.json")]
    done = subprocess.run([*cmd, "--out", str(tmp_path / "pooled")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    pooled = json.loads((tmp_path / "pooled" / "planning_evaluation.json").read_text())
    single = json.loads(GATED.read_text())
    assert pooled["n_cases"] == 48 and len({c["case_id"] for c in pooled["cases"]}) == 48
    regrets = [c["methods"]["world_model"]["regret_months"] for c in single["cases"]]
    assert np.isclose(pooled["methods"]["world_model"]["regret_months"][0], np.mean(regrets) + 0.5)
    assert np.isclose(pooled["methods"]["gold"]["regret_months"][0], single["methods"]["gold"]["regret_months"][0])
    # How the cases were planned travels with them: this report (2026-12-02) predates the evaluation path's
    # default without the site's practice prior, and the pooled page says it had one.
    assert (
        "practice_prior" not in single
        and "with the site's practice prior" in (tmp_path / "pooled" / "planning_evaluation.md").read_text()
    )


def test_pooled_runs_keep_the_evaluation_paths_prior_and_mask(tmp_path: Path) -> None:
    runs = []
    for name, mask in (("a", "assistant"), ("b", "assistant")):
        report = {**json.loads(GATED.read_text()), "practice_prior": False, "mask": mask, "cohort": name}
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
        runs.append(str(tmp_path / f"{name}.json"))
    cmd = [sys.executable, "-m", "oncoplan.training.planner.pool", *runs, "--out", str(tmp_path / "p")]
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    pooled = json.loads((tmp_path / "p" / "planning_evaluation.json").read_text())
    assert (pooled["practice_prior"], pooled["mask"]) == (False, "assistant")
    page = (tmp_path / "p" / "planning_evaluation.md").read_text()
    assert "practice prior" not in page and "the assistant's segmentation of the prepared CT" in page
    label = {**json.loads(Path(runs[1]).read_text()), "mask": "label"}
    Path(runs[1]).write_text(json.dumps(label))
    done = subprocess.run([*cmd[:-1], str(tmp_path / "q")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "mask differ" in done.stderr


def test_runs_of_different_policies_are_refused_and_the_pooled_page_names_the_policy(tmp_path: Path) -> None:
    runs = []
    for name, label in (("a", "openai (m)"), ("b", "openai (m)"), ("c", "offline")):
        report = json.loads(GATED.read_text())
        report |= {"cohort": name, "policy": {"kind": label.split()[0], "label": label, "fallbacks": 1}}
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
        runs.append(str(tmp_path / f"{name}.json"))
    cmd = [sys.executable, "-m", "oncoplan.training.planner.pool"]
    assert (
        subprocess.run([*cmd, *runs[:2], "--out", str(tmp_path / "p")], capture_output=True, timeout=300).returncode
        == 0
    )
    pooled = json.loads((tmp_path / "p" / "planning_evaluation.json").read_text())
    assert pooled["policy"]["label"] == "openai (m)" and pooled["policy"]["fallbacks"] == 2
    assert (
        "planner: openai (m) (2 case(s) fell back to offline)"
        in (tmp_path / "p" / "planning_evaluation.md").read_text()
    )
    done = subprocess.run([*cmd, *runs[1:], "--out", str(tmp_path / "q")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "policy differ" in done.stderr


def test_a_span_keeps_those_cases_only(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "oncoplan.training.planner.pool", f"{GATED}@13-24", "--out", str(tmp_path / "p")]
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    pooled = json.loads((tmp_path / "p" / "planning_evaluation.json").read_text())
    single = json.loads(GATED.read_text())
    assert [c["case_id"].split(":")[1] for c in pooled["cases"]] == [c["case_id"] for c in single["cases"][12:]]
    bad = subprocess.run([*cmd[:3], f"{GATED}@0-30", "--out", str(tmp_path / "q")], capture_output=True, text=True)
    assert bad.returncode == 2 and "@A-B" in bad.stderr


def test_runs_of_different_planners_are_refused_in_one_line(tmp_path: Path) -> None:
    other = json.loads(GATED.read_text())
    other["settings"]["samples"] = 5
    (tmp_path / "t5.json").write_text(json.dumps(other))
    cmd = [sys.executable, "-m", "oncoplan.training.planner.pool", str(GATED), str(tmp_path / "t5.json")]
    done = subprocess.run([*cmd, "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "settings differ" in done.stderr
    assert not (tmp_path / "o").exists()
