"""The README's main job: one synthetic study of each workflow, re-runnable, never clobbering."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

pytestmark = pytest.mark.integration

# A small search keeps the test short; the plumbing is the demo's (`cpu` is its default).
SETTINGS = '{"beam": 1, "samples": 1, "steps": 2, "drug_horizon": 1, "embolic_horizon": 1}'


def _demo(out: Path, *options: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "oncoplan",
        *options,
        "demo",
        "--size",
        "small",
        "--out",
        str(out),
        "--settings",
        SETTINGS,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def test_demo_writes_both_studies_logs_the_series_chosen_and_why_and_reruns(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    first = _demo(out)
    assert first.returncode == 0, first.stderr
    assert "RESEARCH USE ONLY" in first.stdout
    for kind in ("breast", "liver"):
        assert (out / kind / "cohort.csv").is_file()
        assert any((out / kind).rglob("*.dcm"))
    written = sorted(p.name for p in (out / "breast" / "ctv_output").iterdir())
    assert written == ["ctv_note.json", "ctv_rtstruct.dcm", "ctv_seg.dcm"]
    assert "ctv_rtstruct.dcm" in first.stdout
    planned = {p.name for p in (out / "liver" / "tace_output").iterdir()}
    assert {"plan.json", "tace_plan_sr.dcm", "tace_post_seg.dcm", "tace_report_pdf.dcm", "report.pdf"} <= planned
    # The shipped assistant on a generated liver study: a liver of adult size, so no warning.
    segmentation = json.loads((out / "liver" / "tace_output" / "plan.json").read_text())["segmentation"]
    assert 700 <= segmentation["liver_cm3"] <= 4000 and segmentation["warning"] is None, segmentation
    # Its studies come as a PACS sends them: the log names the series each app chose and why, and (-v) each
    # series passed over and why, by number and description (never a UID or a date).
    log = first.stderr
    breast = re.search(r"CT series chosen: series 2 'RT SIM CHEST 3D' \(\d+ images, [\d.]+ mm\): (.+)", log)
    assert breast and breast.group(1) == "thinnest slices of 2 candidates (4 other series passed over)", log[-3000:]
    again = _demo(out, "-v")
    assert again.returncode == 0, again.stderr
    for reason in ("localizer", "derived or secondary series", "not a CT image", "SR object"):
        assert re.search(rf"passed over series \d+ '[^']*' \(.*\): {reason}", again.stderr), reason
    assert re.search(r"CT series chosen: series \d+ '[^']*' \(.*\): PVP phase \(.+\)", log), log[-3000:]
    assert "another reconstruction of the acquisition" in again.stderr
    dates = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyDate) for p in (out / "liver").rglob("*.dcm")}
    dates |= {str(pydicom.dcmread(p, stop_before_pixels=True).StudyDate) for p in (out / "breast").rglob("*.dcm")}
    lines = (log + again.stderr).splitlines()
    assert not [line for line in lines if re.search(r"\b\d+(\.\d+){4,}\b", line) or any(d in line for d in dates)]


def test_demo_refuses_to_replace_foreign_folders(tmp_path: Path) -> None:
    (tmp_path / "breast").mkdir()
    (tmp_path / "breast" / "precious.txt").write_text("keep")
    out = _demo(tmp_path)
    assert out.returncode != 0
    assert len(out.stderr.strip().splitlines()) == 1
    assert (tmp_path / "breast" / "precious.txt").read_text() == "keep"
