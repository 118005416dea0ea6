"""A route's warm app: one `python -m oncoplan.deploy.listener.warm_worker` child that keeps its imports and models
between studies (started on first use, again after it exits), so a study pays for its own work and
not for start-up. One per worker thread and route; a job that overruns its time kills it."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

from .jobs import JobError
from .processes import die_with_parent


class WarmApp:
    def __init__(self, preload: str | None, log: Path) -> None:
        self.preload, self.log = preload, Path(log)
        self.proc: subprocess.Popen | None = None

    def _started(self) -> subprocess.Popen:
        if self.proc is not None and self.proc.poll() is None:
            return self.proc
        self.log.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "oncoplan.deploy.listener.warm_worker"]
        if self.preload:
            command += ["--preload", self.preload]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                preexec_fn=partial(die_with_parent, os.getpid()),
            )
        return self.proc

    def run(
        self,
        argv: list[str],
        log: Path,
        timeout_s: float,
        env: dict[str, str] | None = None,
        status: Path | None = None,
    ) -> int:
        """`oncoplan ARGV` in the warm child with `env` set for it, its output appended to `log`: the exit
        status, which the child also records durably in `status` before answering."""
        proc = self._started()
        job = {"argv": argv, "log": str(log), "env": env or {}, "status": str(status) if status else None}
        try:
            proc.stdin.write((json.dumps(job) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            self.stop()
            raise JobError("the warm app worker exited before the job was sent") from None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        if not ready:
            self.stop()
            raise JobError(f"app timed out after {timeout_s:.0f} s")
        line = proc.stdout.readline()
        if not line:
            status = proc.wait()
            self.proc = None
            raise JobError(f"the warm app worker died (exit status {status})")
        return int(json.loads(line)["rc"])

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the app's own children too
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.proc = None
