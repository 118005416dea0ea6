"""A warm app worker: one process that runs `oncoplan` commands one after another, so imports
(about 11 s of a contouring run on a 2-core machine, BENCHMARKS.md) and model loading are paid once,
not per study. The listener keeps one per route (deploy/listener/warm.py).

    python -m oncoplan.deploy.listener.warm_worker [--preload MODULE ...] [--max-jobs N]

Protocol, one JSON object per line: a job on stdin, ``{"argv": ["contour", "-i", IN, "-o", OUT],
"log": "/path/app.log", "status": "/path/exit_status"}``; its answer on stdout, ``{"rc": 0}``. The exit
status is first written durably to "status" (as the route supervisor in processes.py does), so a job
finished just before the listener died is taken as done at its restart, not run again. While a job
runs, file descriptors 1 and 2 point at its log, so everything it prints (Holoscan's C++ logger too)
lands there, as with a child process per study. After a failure that is not bad input (exit status
other than 0 or 2), or after `--max-jobs` jobs, the worker answers and exits, so the next job starts in
a fresh process.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from oncoplan import cli
from oncoplan.apps.console import configure
from oncoplan.deploy.listener.processes import write_status

FRESH_START_AFTER = {0, 2}  # success and bad input (refused before the graph) keep the worker


@contextmanager
def output_to(path: str) -> Iterator[None]:
    """Point fd 1 and 2 (Python's and C++'s writes alike) at `path` for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """`env` set for the duration (a route's settings, e.g. $ONCOPLAN_SERIES_DESCRIPTION), then restored."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_one(argv: list[str], log: str, env: dict[str, str] | None = None) -> int:
    """`oncoplan ARGV` in this process with `env`, its output in `log`; the exit status, never an exception."""
    with output_to(log), environment(env or {}):
        try:
            return cli.main(argv)
        except SystemExit as exc:  # argparse's usage errors
            return exc.code if isinstance(exc.code, int) else 2
        except Exception:  # the graph failed: the log gets the traceback, the caller a status
            traceback.print_exc()
            return 1


def serve(jobs, answers, max_jobs: int) -> None:
    for done, line in enumerate(jobs, start=1):
        try:
            job = json.loads(line)
            argv, log = [str(a) for a in job["argv"]], str(job["log"])
            env = {str(k): str(v) for k, v in (job.get("env") or {}).items()}
            status = Path(job["status"]) if job.get("status") else None
        except (ValueError, KeyError, TypeError) as exc:
            answers.write(json.dumps({"rc": 2, "error": f"malformed job ({exc})"}) + "\n")
            answers.flush()
            continue
        rc = run_one(argv, log, env)
        if status is not None:
            write_status(status, rc)  # first: the work is done whatever happens to the listener next
        answers.write(json.dumps({"rc": rc}) + "\n")
        answers.flush()
        if rc not in FRESH_START_AFTER or done >= max_jobs:
            return


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m oncoplan.deploy.listener.warm_worker", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--preload", action="append", default=[], help="module to import before the first job")
    ap.add_argument("--max-jobs", type=int, default=100, help="jobs before the worker exits for a fresh one")
    args = ap.parse_args(argv)
    # Answers go to the stdout we were started with; fd 1 itself is lent to each job's log.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    configure(verbose=True)  # before the preloads: each job's log keeps everything, as a fresh `oncoplan -v` would
    for module in args.preload:
        importlib.import_module(module)
    print(f"warm worker {os.getpid()} ready (preloaded: {', '.join(args.preload) or 'nothing'})", file=sys.stderr)
    serve(sys.stdin, answers, args.max_jobs)
    return 0


if __name__ == "__main__":
    from oncoplan.apps.runner import exit_now
    from oncoplan.runtime.stack import ensure_holoscan_stack

    ensure_holoscan_stack()
    exit_now(main())
