"""A plain install works: the wheel built from this tree, with no checkout on the path, runs `oncoplan
contour` and `oncoplan plan` on the bundles it carries as package data (no -m), and its module list is
every package folder of the tree (a new sub-folder that the packaging misses fails here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from oncoplan.training.synth.cohort import generate_cohort

from .helpers import cohort_rows

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {
    "oncoplan": "oncoplan",
    "training": "oncoplan/training",
    "operators": "oncoplan/operators",
    "apps": "oncoplan/apps",
    "deploy": "oncoplan/deploy",
}


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "-q", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(out)]
    subprocess.run(build, check=True, capture_output=True, timeout=600, cwd=out)
    (wheel,) = out.glob("oncoplan-*.whl")
    site = out / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    return site


def _oncoplan(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m oncoplan ARGS` importing the wheel's files only (the checkout is not on the path)."""
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    env.pop("ONCOPLAN_BUNDLES", None)
    probe = "import oncoplan, sys; sys.exit(0 if oncoplan.__file__.startswith(sys.argv[1]) else 3)"
    assert subprocess.run([sys.executable, "-c", probe, str(site)], env=env, cwd=cwd, check=False).returncode == 0
    return subprocess.run(
        [sys.executable, "-m", "oncoplan", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_the_wheel_holds_every_package_folder_of_the_tree(wheel_site: Path) -> None:
    for folder, where in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            packaged = wheel_site / where / init.parent.relative_to(REPO / folder) / "__init__.py"
            assert packaged.is_file(), f"{init.parent.relative_to(REPO)} is not in the wheel (setup.py packages)"
    for bundle in ("ctv_llmseg", "tace_assistant", "tace_dynamics", "tace_survival"):
        assert (wheel_site / "oncoplan" / "bundles" / bundle / "configs" / "inference.json").is_file()
        assert list((wheel_site / "oncoplan" / "bundles" / bundle / "models").glob("*.pt")), bundle
    # Code packages' data: the liver-2 physicians' practice, fitted from the real table.
    assert (wheel_site / "oncoplan" / "training" / "synth" / "hcc_tace_seg_practice.json").is_file()


@pytest.mark.slow
def test_the_installed_wheel_contours_and_plans_with_its_own_bundles(wheel_site: Path, tmp_path: Path) -> None:
    breast = generate_cohort("breast", tmp_path / "b", 1, seed=71, size="small", progress=False)
    study = breast / cohort_rows(breast)[0]["image_dir"]
    note = cohort_rows(breast)[0]["note"]
    r = _oncoplan(wheel_site, "contour", "-i", str(study), "-o", str(tmp_path / "ctv"), "--note", note, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {"ctv_rtstruct.dcm", "ctv_seg.dcm"} <= {p.name for p in (tmp_path / "ctv").iterdir()}
    assert str(wheel_site / "oncoplan" / "bundles" / "ctv_llmseg") in r.stdout + r.stderr  # the wheel's bundle ran

    liver = generate_cohort("liver", tmp_path / "l", 1, seed=72, size="small", progress=False)
    pre = liver / cohort_rows(liver)[0]["TCIA_ID"] / "dicom" / "pre"
    settings = json.dumps({"beam": 1, "samples": 1, "steps": 2, "drug_horizon": 1, "embolic_horizon": 1})
    r = _oncoplan(
        wheel_site, "plan", "-i", str(pre), "-o", str(tmp_path / "tace"), "--settings", settings, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    plan = json.loads((tmp_path / "tace" / "plan.json").read_text())
    # The shipped bundles' versions: only the wheel's copy of them can be found from here (the probe above).
    assert set(plan["bundles"]) == {"tace_assistant", "tace_dynamics", "tace_survival"}, plan["bundles"]
