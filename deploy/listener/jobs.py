"""Runs one job: the instances the job was created with linked into a fresh input folder, the route's
app as a process tree under the supervisor of processes.py (it dies with the listener and takes every
process of the job with it) or in the route's warm app worker (warm.py), its DICOM results."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from .config import APP_PREFIX, Route
from .processes import SESSION_FILE, die_with_parent, end_tree, read_session, read_status
from .queue import Job, JobQueue
from .spool import key

if TYPE_CHECKING:
    from .warm import WarmApp

STOP_TIMEOUT_S = 120.0  # a route's stop command (docker rm -f, kubectl delete job) gets this long


class JobError(RuntimeError):
    """The app failed; the message is the reason recorded with the job."""


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # no copy of the pixels; the spool keeps the original
    except OSError:
        shutil.copy2(src, dst)


def is_dicom(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def stage_input(queue: JobQueue, job: Job, folder: Path) -> int:
    """Link exactly the instances the job was created with into `folder`: instances that arrived
    later belong to the study's next generation and its own job, never to this one."""
    inputs = queue.job_inputs(job.id)
    for series, src in inputs:
        if not src.is_file():
            raise JobError("an input instance is no longer in the spool")
        _link(src, folder / key(series) / src.name)
    return len(inputs)


def fill(command: tuple[str, ...], job: Job, input_dir: Path | None = None, output_dir: Path | None = None) -> list:
    values = {"{job}": str(job.id), "{input}": str(input_dir or ""), "{output}": str(output_dir or "")}
    out = []
    for arg in command:
        for placeholder, value in values.items():
            arg = arg.replace(placeholder, value)
        out.append(arg)
    return out


def stop_job(route: Route | None, job: Job, job_dir: Path | None = None) -> str | None:
    """End everything of `job` still running: its process tree (by token, and by the session its
    supervisor recorded in `job_dir`: processes that cleared their environment) and, through the route's
    `stop` command, what it started elsewhere. None, or why it could not be confirmed."""
    problems = []
    if not end_tree(job.token, session=read_session(session_file(job_dir) if job_dir else None)):
        problems.append("processes of the job survived SIGKILL")
    if route is not None and route.stop:
        try:
            proc = subprocess.run(fill(route.stop, job), capture_output=True, timeout=STOP_TIMEOUT_S, check=False)
            if proc.returncode != 0:
                problems.append(f"stop command exited with status {proc.returncode}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            problems.append(f"stop command failed ({type(exc).__name__})")
    return "; ".join(problems) or None


def status_file(job_dir: Path) -> Path:
    """Where the supervisor (or the warm worker) records the app's exit status."""
    return job_dir / "exit_status"


def session_file(job_dir: Path) -> Path:
    """Where the supervisor records its session (processes.py), beside the exit status."""
    return job_dir / SESSION_FILE


def _run_tree(
    command: list[str], token: str, log_path: Path, timeout_s: float, status: Path, env: dict[str, str]
) -> int:
    """`command` under the supervisor (processes.py): on timeout the whole tree is ended, not only the
    supervisor's direct child."""
    supervised = [sys.executable, "-m", "oncoplan.deploy.listener.processes", token, str(status), *command]
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(
                supervised,
                stdout=log,
                stderr=subprocess.STDOUT,
                # SIGTERM, not SIGKILL, on the listener's death: the supervisor catches it and ends the tree.
                preexec_fn=partial(die_with_parent, os.getpid(), signal.SIGTERM),
                env={**os.environ, **env},
            )
        except OSError as exc:
            raise JobError(f"cannot start the app ({exc})") from None
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.terminate()  # the supervisor ends the tree
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            end_tree(token, session=read_session(status.with_name(SESSION_FILE)))
            raise JobError(f"app timed out after {timeout_s:.0f} s") from None


def run_job(job_dir: Path, route: Route, queue: JobQueue, job: Job, warm: WarmApp | None = None) -> list[Path]:
    """The DICOM files the route's app wrote for `job` (raises JobError on any failure); with
    `warm`, the route's oncoplan command runs in that warm worker instead of a new process."""
    shutil.rmtree(job_dir, ignore_errors=True)  # a run cut short by a crash starts clean
    input_dir, output_dir = job_dir / "input", job_dir / "output"
    input_dir.mkdir(parents=True)
    output_dir.mkdir()  # there, empty, for a route that bind-mounts it into a container (`-v {output}:...`)
    if stage_input(queue, job, input_dir) == 0:
        raise JobError("no instances to process")
    command = fill(route.command, job, input_dir, output_dir)
    log = job_dir / "app.log"
    if warm is not None:
        status = warm.run(command[len(APP_PREFIX) :], log, route.timeout_s, dict(route.env), status_file(job_dir))
    else:
        status = _run_tree(command, job.token, log, route.timeout_s, status_file(job_dir), dict(route.env))
    return collect(job_dir, status)


def finished_before_a_crash(job_dir: Path) -> list[Path] | None:
    """The results of a job whose app finished (status 0 recorded by its supervisor) before the listener
    died without recording it done; None when it did not finish (it runs again)."""
    if read_status(status_file(job_dir)) != 0:
        return None
    try:
        return collect(job_dir, 0)
    except JobError:
        return None


def collect(job_dir: Path, status: int) -> list[Path]:
    """The DICOM results in the job's output folder (JobError for a failed run or no DICOM)."""
    output_dir = job_dir / "output"
    if status != 0:  # what the app said stays in its log: it may name the patient, and this goes to the log
        raise JobError(f"app exited with status {status} (its output: app.log in {job_dir})")
    results = sorted(p for p in output_dir.rglob("*") if p.is_file() and is_dicom(p)) if output_dir.exists() else []
    if not results:
        raise JobError("app wrote no DICOM")
    return results
