"""Runs one job: the study's files linked into a fresh input folder, the route's app in a child
process (it dies with the listener, so a restart never finds a stray run) or in the route's warm
app worker (warm.py), its DICOM results."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from .config import APP_PREFIX, Route
from .queue import JobQueue
from .spool import key

if TYPE_CHECKING:
    from .warm import WarmApp


class JobError(RuntimeError):
    """The app failed; the message is the reason recorded with the job."""


ORPHANED = 137  # the exit status of a child whose parent died before it could ask to die with it


def die_with_parent(parent: int) -> None:  # pragma: no cover - runs in the child
    """In a child of `parent` (its pid, taken before the fork): SIGKILL when that parent dies
    (PR_SET_PDEATHSIG), in a session of its own. A parent that died between the fork and this request
    sends no signal ever, so the child checks it still has that parent and otherwise leaves at once: an
    orphaned app would finish a job the restarted listener runs again, an orphaned receiver would keep
    taking associations on the port."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(ORPHANED)
    os.setsid()


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


def stage_input(queue: JobQueue, route: Route, study: str, folder: Path) -> int:
    """Link the study's instances (or only the series the route matched) into `folder`."""
    n = 0
    for series, attrs in queue.study_series(study).items():
        if route.input == "series" and not route.matches(attrs):
            continue
        for src in queue.series_files(series):
            _link(src, folder / key(series) / src.name)
            n += 1
    return n


def _run_child(command: list[str], log_path: Path, timeout_s: float) -> int:
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                preexec_fn=partial(die_with_parent, os.getpid()),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise JobError(f"app timed out after {timeout_s:.0f} s") from None
        except OSError as exc:
            raise JobError(f"cannot start the app ({exc})") from None
    return proc.returncode


def run_job(job_dir: Path, route: Route, queue: JobQueue, study: str, warm: WarmApp | None = None) -> list[Path]:
    """The DICOM files the route's app wrote for `study` (raises JobError on any failure); with
    `warm`, the route's oncoplan command runs in that warm worker instead of a new process."""
    shutil.rmtree(job_dir, ignore_errors=True)  # a run cut short by a crash starts clean
    input_dir, output_dir = job_dir / "input", job_dir / "output"
    input_dir.mkdir(parents=True)
    if stage_input(queue, route, study, input_dir) == 0:
        raise JobError("no instances to process")
    command = [a.replace("{input}", str(input_dir)).replace("{output}", str(output_dir)) for a in route.command]
    log = job_dir / "app.log"
    if warm is not None:
        status = warm.run(command[len(APP_PREFIX) :], log, route.timeout_s)
    else:
        status = _run_child(command, log, route.timeout_s)
    if status != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise JobError(f"app exited with status {status}: {tail[0][:500]}")
    results = sorted(p for p in output_dir.rglob("*") if p.is_file() and is_dicom(p)) if output_dir.exists() else []
    if not results:
        raise JobError("app wrote no DICOM")
    return results
