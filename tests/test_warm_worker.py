"""The warm app worker (`python -m oncoplan.deploy.listener.warm_worker`) and the listener's handle on it
(deploy/listener/warm.py): studies one after another in one process, bad input, overruns, a crash."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
from highdicom.seg import segread

from oncoplan.deploy.listener.jobs import JobError
from oncoplan.deploy.listener.warm import WarmApp

from .helpers import cohort_rows
from .pacs import make_study, wait_for

pytestmark = pytest.mark.integration

NOTE = "N1, breast conserving surgery, left side"


def _contour(breast_cohort: Path, case: int, out: Path) -> list[str]:
    row = cohort_rows(breast_cohort)[case]
    return ["contour", "-i", str(breast_cohort / row["image_dir"]), "-o", str(out), "--note", NOTE]


def test_one_worker_contours_studies_in_turn_and_survives_bad_input(breast_cohort: Path, tmp_path: Path) -> None:
    app = WarmApp("oncoplan.apps.ctv_contouring.app", tmp_path / "worker.log")
    try:
        assert app.run(_contour(breast_cohort, 0, tmp_path / "a"), tmp_path / "a.log", 600) == 0
        pid = app.proc.pid
        bad = ["contour", "-i", str(breast_cohort), "-o", str(tmp_path / "bad"), "--note", NOTE]
        assert app.run(bad, tmp_path / "bad.log", 600) == 2
        assert (tmp_path / "bad.log").read_text().strip().splitlines()[-1].startswith("oncoplan: error: ")
        assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
        assert app.run(_contour(breast_cohort, 0, tmp_path / "b"), tmp_path / "b.log", 600) == 0
        assert app.proc.pid == pid  # the same process: imports and models were kept
    finally:
        app.stop()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["ctv_note.json", "ctv_rtstruct.dcm", "ctv_seg.dcm"]
    first, again = (segread(tmp_path / d / "ctv_seg.dcm") for d in "ab")
    assert first.pixel_array.any()
    assert np.array_equal(first.pixel_array, again.pixel_array)  # a warm run is the same as a fresh one
    assert (tmp_path / "worker.log").read_text().count("ready") == 1


def test_a_job_past_its_time_kills_the_worker_and_the_next_job_gets_a_fresh_one(tmp_path: Path) -> None:
    app = WarmApp(None, tmp_path / "worker.log")
    slow = ["synth", "liver", "--out", str(tmp_path / "slow"), "--cases", "20", "--size", "small", "--quiet"]
    app._started()  # the job's 1 s is the job's, not the worker's start-up (slower on a loaded machine)
    wait_for(lambda: "ready" in (tmp_path / "worker.log").read_text(), 60, "the worker to be ready")
    with pytest.raises(JobError, match="timed out after 1 s"):
        app.run(slow, tmp_path / "slow.log", 1.0)
    assert app.proc is None
    quick = ["synth", "breast", "--out", str(tmp_path / "quick"), "--cases", "1", "--size", "small", "--quiet"]
    try:
        assert app.run(quick, tmp_path / "quick.log", 600) == 0
    finally:
        app.stop()
    assert (tmp_path / "quick" / "cohort.json").exists()
    assert (tmp_path / "worker.log").read_text().count("ready") == 2


def test_a_worker_killed_mid_job_fails_that_job_and_the_next_one_runs(tmp_path: Path) -> None:
    app = WarmApp(None, tmp_path / "worker.log")
    slow = ["synth", "liver", "--out", str(tmp_path / "slow"), "--cases", "20", "--size", "small", "--quiet"]
    app._started()
    threading.Timer(1.0, os.kill, (app.proc.pid, signal.SIGKILL)).start()
    with pytest.raises(JobError, match=r"died \(exit status -9\)"):
        app.run(slow, tmp_path / "slow.log", 600)
    quick = ["synth", "breast", "--out", str(tmp_path / "quick"), "--cases", "1", "--size", "small", "--quiet"]
    try:
        assert app.run(quick, tmp_path / "quick.log", 600) == 0
    finally:
        app.stop()


def test_the_worker_answers_a_malformed_job_and_goes_on(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    jobs = "not json\n" + json.dumps({"argv": ["synth", "--help"], "log": str(tmp_path / "h.log")}) + "\n"
    done = subprocess.run(
        [sys.executable, "-m", "oncoplan.deploy.listener.warm_worker"],
        input=jobs,
        capture_output=True,
        text=True,
        timeout=120,
    )
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0
    assert answers[0]["rc"] == 2 and "malformed job" in answers[0]["error"]
    assert answers[1] == {"rc": 0}
    assert "usage:" in (tmp_path / "h.log").read_text()


def test_a_warm_run_records_its_exit_status_durably_so_a_crash_after_it_does_not_rerun_the_job(
    tmp_path: Path,
) -> None:
    """As the route supervisor does for a command route: the worker writes the status before it answers, and
    a listener restarting after a kill -9 takes a job whose status is 0 as done (finished_before_a_crash)."""
    from oncoplan.deploy.listener.jobs import finished_before_a_crash, status_file
    from oncoplan.deploy.listener.processes import read_status

    job_dir = tmp_path / "job"
    (job_dir / "output").mkdir(parents=True)
    app = WarmApp(None, tmp_path / "worker.log")
    try:
        assert app.run(["synth", "--help"], tmp_path / "ok.log", 120, status=status_file(job_dir)) == 0
        assert read_status(status_file(job_dir)) == 0
        assert finished_before_a_crash(job_dir) is None  # finished, but it wrote no DICOM: run it again
        shutil.copy(make_study(tmp_path / "study", seed=4690, slices=1)[0], job_dir / "output" / "result.dcm")
        assert finished_before_a_crash(job_dir) == [job_dir / "output" / "result.dcm"]
        bad = tmp_path / "bad"
        bad.mkdir()
        refused = ["contour", "-i", str(tmp_path / "missing"), "-o", str(bad / "output")]
        assert app.run(refused, tmp_path / "b.log", 120, status=status_file(bad)) == 2
        assert read_status(status_file(bad)) == 2
    finally:
        app.stop()
