"""More receiving processes on the listener's port (SO_REUSEPORT): the kernel spreads associations
over them, so concurrent senders are not held to one interpreter. pynetdicom polls (two threads
per association waking every millisecond) and every wake-up takes the GIL; in one process eight
associations are slower than one (see BENCHMARKS.md, Listener ingest).

Each extra process runs only the SCP, with its own spool handle and SQLite connection: the
durability contract (written, fsynced, renamed and committed before success) is per instance and
holds in any process. Everything else (completion, jobs, delivery, health) stays in the listener.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading

from . import logs, scp
from .config import ListenerConfig
from .processes import die_with_parent
from .queue import JobQueue
from .spool import Spool

RESTART_PAUSE_S = (1.0, 60.0)  # the first and the longest wait before a dead receiver is started again


def receive(config: ListenerConfig, listener: int) -> None:  # pragma: no cover - runs in the child
    """A receiving process of the `listener` (pid): the SCP until SIGTERM or the listener's death."""
    die_with_parent(listener)
    logs.setup()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        # clean_torn=False: the listener cleaned at its start, and others may be writing now.
        spool = Spool(config.spool, config.min_free_mb, clean_torn=False, quarantine_max_mb=config.quarantine_max_mb)
        queue = JobQueue(config.database)
        server = scp.start_scp(config, spool, queue)
    except Exception as exc:  # one line for the log; the listener starts another after a pause
        logs.event("receiver_failed", logging.ERROR, pid=os.getpid(), error=f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from None
    logs.event("receiver_started", pid=os.getpid())
    stop.wait()
    server.shutdown()
    queue.close()


class Receivers:
    """`config.receivers - 1` receiving processes beside the listener's own SCP; one that dies is
    started again."""

    def __init__(self, config: ListenerConfig) -> None:
        self.config = config
        self._context = mp.get_context("spawn")  # no fork of a process with running threads
        self._procs: list[mp.process.BaseProcess] = []
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None

    def _spawn(self) -> mp.process.BaseProcess:
        proc = self._context.Process(target=receive, args=(self.config, os.getpid()), name="receiver", daemon=True)
        proc.start()
        return proc

    def start(self) -> None:
        self._procs = [self._spawn() for _ in range(self.config.receivers - 1)]
        if self._procs:
            self._watch = threading.Thread(target=self._keep_alive, name="receivers", daemon=True)
            self._watch.start()

    def _keep_alive(self) -> None:
        """Start a dead receiver again, waiting twice as long each time one dies in a row (a port
        taken by another program must not become a tight restart loop)."""
        pause = RESTART_PAUSE_S[0]
        while not self._stop.wait(pause):
            dead = [i for i, proc in enumerate(self._procs) if not proc.is_alive()]
            for i in dead:
                proc = self._procs[i]
                logs.event("receiver_died", logging.ERROR, pid=proc.pid, exitcode=proc.exitcode)
                self._procs[i] = self._spawn()
            pause = min(2 * pause, RESTART_PAUSE_S[1]) if dead else RESTART_PAUSE_S[0]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.join(timeout=5)
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
