"""Process trees of the listener's jobs: each job's command runs under a small supervisor that dies
with the listener and takes the whole tree with it, so a job never outlives the listener that owns it.

Why a supervisor: the kernel's parent-death signal (PR_SET_PDEATHSIG) reaches only the direct child.
A route whose command is a wrapper (`sh -c ...`, `docker run`, a script around `kubectl`) leaves the
real work in a grandchild, which used to survive a kill -9 of the listener and finish a job that the
restarted listener then ran again. Every process of a job carries the job's token in its environment
(ONCOPLAN_JOB), inherited by whatever it starts, even a child that leaves the process group; ending
a job is ending every process that carries its token. A process that clears its environment (`env -i`,
sudo's env_reset, `su -`) loses the token but stays in the supervisor's session (the supervisor is a
session leader): the supervisor records its session (its pid and start time, SESSION_FILE beside the
status file, written durably) before it starts the command, and ending a job also ends every process
of that session, even after the supervisor died. Work started outside the tree (a container run by the
engine's daemon, a cluster Job) is ended by the route's `stop` command.

    python -m oncoplan.deploy.listener.processes TOKEN STATUS_FILE COMMAND...   (the supervisor; used by jobs.py)

The supervisor records the command's exit status durably (STATUS_FILE, fsynced) the moment the command
exits, before anything else: a listener killed after the app finished but before it recorded the job done
finds the status at its restart and takes the job's results instead of running the app again.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .spool import write_durably

TOKEN_VARIABLE = "ONCOPLAN_JOB"
ORPHANED = 137  # the exit status of a child whose parent died before it could ask to die with it
SESSION_FILE = "session"  # beside the status file: the supervisor's session (its pid and start time)


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:  # pragma: no cover - runs in the child
    """In a child of `parent` (its pid, taken before the fork): `sig` when that parent dies
    (PR_SET_PDEATHSIG), in a session of its own. A parent that died between the fork and this request
    sends no signal ever, so the child checks it still has that parent and otherwise leaves at once: an
    orphaned app would finish a job the restarted listener runs again, an orphaned receiver would keep
    taking associations on the port."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, sig)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(ORPHANED)
    os.setsid()


def _stat(pid: int | str) -> tuple[str, int, int] | None:
    """(state, session id, start time in clock ticks since boot) of process `pid`, or None when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return fields[0], int(fields[3]), int(fields[19])  # fields 3, 6 and 22 of proc(5)
    except (OSError, ValueError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    stat = _stat(pid)
    return stat[2] if stat else None


Session = tuple[int, int]  # (the supervisor's pid, which is its session id; its start time)


def write_session(path: Path) -> Session | None:
    """Record this process's session durably at `path` when it leads one (None when it does not)."""
    pid = os.getpid()
    started = start_time(pid)
    if os.getsid(0) != pid or started is None:
        return None
    write_durably(path, f"{pid} {started}\n".encode())
    return pid, started


def read_session(path: Path | None) -> Session | None:
    """The session a supervisor recorded at `path`, or None (none recorded, or unreadable)."""
    if path is None:
        return None
    try:
        pid, started = (int(v) for v in path.read_text().split())
    except (OSError, ValueError):
        return None
    return (pid, started) if pid > 1 else None


def _live_session(session: Session | None) -> int | None:
    """The session id of `session` when it can still only be the job's: its leader (the supervisor) is
    gone, or still the process recorded (the same start time), never a reused pid; never the caller's own
    session unless the caller is that supervisor (which ends its session but not itself)."""
    if session is None:
        return None
    pid, started = session
    now = start_time(pid)
    if (now is not None and now != started) or (pid == os.getsid(0) and pid != os.getpid()):
        return None
    return pid


def members(token: str, session: Session | None = None) -> list[int]:
    """Pids of the live processes that carry `token` (readable environments only: our own user's) or,
    with `session` (see read_session), belong to that session."""
    mark, found = f"{TOKEN_VARIABLE}={token}".encode(), []
    sid = _live_session(session)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        if sid is not None:
            stat = _stat(entry.name)
            if stat is not None and stat[1] == sid:
                if stat[0] not in "ZX":  # a zombie is dead already (its parent reaps it)
                    found.append(int(entry.name))
                continue
        if not token:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if mark in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def end_tree(token: str, timeout_s: float = 10.0, session: Session | None = None) -> bool:
    """SIGKILL every process carrying `token` or in `session` until none is left: True when none is
    (zombies excepted)."""
    if not token and session is None:
        return True
    end = time.monotonic() + timeout_s
    while True:
        pids = members(token, session)
        if not pids:
            return True
        if time.monotonic() > end:
            return False
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def supervise(token: str, status_file: Path, command: list[str]) -> int:  # pragma: no cover - own process
    """Run `command` with the token in its environment; end its whole tree when it exits (stragglers a
    wrapper left behind) or when this supervisor is told to stop (SIGTERM: the listener died or the
    job timed out)."""

    if os.getsid(0) != os.getpid():  # started without die_with_parent (by hand): a session of our own
        with contextlib.suppress(OSError):
            os.setsid()
    # Before the command starts: a process of it that clears its environment is still found by session.
    session = write_session(status_file.with_name(SESSION_FILE))

    def stop(signum: int, _frame: object) -> None:
        end_tree(token, session=session)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    env = dict(os.environ, **{TOKEN_VARIABLE: token})
    try:
        proc = subprocess.Popen(command, env=env)
    except OSError as exc:
        print(f"cannot start the route's command ({exc})", file=sys.stderr)
        return 126
    status = proc.wait()
    status = status if status >= 0 else 128 - status
    write_status(status_file, status)  # first: the app's work is done whatever happens to us next
    end_tree(token, session=session)
    return status


def write_status(path: Path, status: int) -> None:
    """The exit status, whole or absent after a crash (written, fsynced, renamed)."""
    write_durably(path, f"{status}\n".encode())


def read_status(path: Path) -> int | None:
    """The exit status a supervisor recorded, or None (not finished, or never started)."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) < 4 or sys.argv[1] in ("-h", "--help"):
        usage = "usage: python -m oncoplan.deploy.listener.processes TOKEN STATUS_FILE COMMAND..."
        print(f"{usage}\n\n{__doc__.split(chr(10) + chr(10))[0]}", file=sys.stdout if len(sys.argv) > 1 else sys.stderr)
        sys.exit(0 if sys.argv[1:2] in (["-h"], ["--help"]) else 2)
    sys.exit(supervise(sys.argv[1], Path(sys.argv[2]), sys.argv[3:]))
