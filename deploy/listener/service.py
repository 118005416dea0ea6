"""The listener: SCP, study-completion scheduler, job workers, result sender and health endpoint,
each a thread around the persistent queue. `Listener(config).serve()` is `oncoplan listen`."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from . import health, logs, scp, sender
from .config import ListenerConfig, Route
from .jobs import JobError, finished_before_a_crash, run_job, stop_job
from .queue import Job, JobQueue
from .receivers import Receivers
from .spool import Spool, hold, key
from .warm import WarmApp

T = TypeVar("T")


class Listener:
    def __init__(self, config: ListenerConfig) -> None:
        self.config = config
        # First: a second listener on this spool exits here (SpoolInUse), before it cleans the live one's
        # arrivals, ends its jobs as interrupted or tries the port.
        self._spool_lock: int | None = hold(config.spool)
        self.spool = Spool(config.spool, config.min_free_mb, quarantine_max_mb=config.quarantine_max_mb)
        self.queue = JobQueue(config.database)
        self.routes = {r.name: r for r in config.routes}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[int, Job] = {}  # jobs this process is running now, by id (ended whole on stop)
        self._running_lock = threading.Lock()
        self._scp = None
        self._receivers = Receivers(config)
        self._health = None

    # --- one loop per concern --------------------------------------------------------------
    def _forever(self, step: Callable[[], bool], pause_s: float) -> None:
        """Run `step` until stop, pausing `pause_s` after each step that found nothing to do. An error
        (the state file locked past its busy timeout, a disk that failed a write) is logged and the loop
        goes on: a thread that died of one bad moment would stop its concern for good, silently."""
        while not self._stop.is_set():
            try:
                busy = step()
            except Exception as exc:
                loop = threading.current_thread().name
                logs.event("loop_error", logging.ERROR, loop=loop, error=f"{type(exc).__name__}: {exc}")
                busy = False
            if not busy:
                self._stop.wait(pause_s)

    def _until_recorded(self, what: str, write: Callable[[], T]) -> T:
        """A state change that follows work already done (a job's results, a delivery's outcome) is
        retried while the state file stays locked or unwritable: left to the loop, the work would be
        lost (a job left `running` till the next start, a result sent twice). Stopping gives up; the
        next start's recovery then runs the job again."""
        while True:
            try:
                return write()
            except sqlite3.OperationalError as exc:
                logs.event("record_retry", logging.WARNING, what=what, error=str(exc))
                if self._stop.wait(self.config.poll_s):
                    raise

    def _complete_studies(self) -> bool:
        """A study with no new instance for the quiet period is complete: each route that wants it gets a
        job for this generation, with the series it takes (the whole study, or the matched series)."""
        for study in self.queue.quiet_studies(self.config.quiet_period_s):
            series = self.queue.study_series(study)
            routes = {}
            for route in self.config.routes:
                matched = [uid for uid, attrs in series.items() if route.matches(attrs)]
                if matched:
                    routes[route.name] = matched if route.input == "series" else list(series)
            routing = self.queue.route_study(study, routes, self.config.quiet_period_s)
            if routing is None:
                continue
            if routing.jobs == [] and routing.purged:
                why = "instances of a study whose others the retention deleted: send the whole study again"
                logs.event("study_not_routed", logging.WARNING, study=key(study), missing=routing.purged, reason=why)
            else:
                logs.event("study_complete", study=key(study), routes=list(routes), jobs=routing.jobs)
        return False

    def _work(self) -> None:
        warm: dict[str, WarmApp] = {}  # this thread's warm app per route

        def one_job() -> bool:
            job = self.queue.claim_job(secrets.token_hex(12))
            if job is not None:
                self._run(job, warm)
            return job is not None

        try:
            self._forever(one_job, self.config.poll_s)
        finally:
            for app in warm.values():
                app.stop()

    def _warm_app(self, route: Route, warm: dict[str, WarmApp]) -> WarmApp | None:
        if route.warm is None:
            return None
        if route.name not in warm:
            log = self.spool.root / "warm" / f"{route.name}-{threading.current_thread().name}.log"
            warm[route.name] = WarmApp(route.warm, log)
        return warm[route.name]

    def _run(self, job: Job, warm: dict[str, WarmApp]) -> None:
        route = self.routes.get(job.route)
        logs.event("job_started", job=job.id, route=job.route, study=key(job.study_uid), attempt=job.attempts)
        try:
            if route is None:
                raise JobError(f"route {job.route!r} is no longer configured")
            app = self._warm_app(route, warm)
            with self._running_lock:
                self._running[job.id] = job
            try:
                results = run_job(self.spool.job_dir(job.id), route, self.queue, job, app)
            finally:
                with self._running_lock:
                    self._running.pop(job.id, None)
        except Exception as exc:  # one job's failure must never stop the worker
            if self._stop.is_set():  # ended by stop(): left running in the queue, so the next start runs it again
                logs.event("job_interrupted", logging.WARNING, job=job.id, route=job.route, error="listener stopped")
                return
            # nothing of a failed or timed-out run may go on beside its retry
            left = stop_job(route, job, self.spool.job_dir(job.id))
            if left:
                logs.event("job_not_stopped", logging.ERROR, job=job.id, route=job.route, error=left)
            c = self.config
            fail = partial(self.queue.fail_job, job, str(exc), c.max_attempts, c.retry_backoff_s, c.max_backoff_s)
            state = self._until_recorded("job_failed", fail)
            logs.event("job_failed", logging.ERROR, job=job.id, route=job.route, error=str(exc), now=state)
            return
        self._until_recorded("job_done", partial(self.queue.finish_job, job, results, route.destination))
        logs.event("job_done", job=job.id, route=job.route, results=len(results))

    def _deliver(self) -> bool:
        """Each result's outcome is its own: one that cannot be sent fails alone (for good when it can
        never be sent), and one the destination acknowledged is recorded sent and never sent again."""
        due = self.queue.due_deliveries()
        by_destination = defaultdict(list)
        for d in due:
            by_destination[d.destination].append(d)
        for name, batch in by_destination.items():
            peer = self.config.destinations[name]
            try:
                outcome = sender.send(peer, self.config.ae_title, [d.path for d in batch])
            except Exception as exc:  # e.g. the network failed between files: each unsent one is retried
                outcome = {d.path: sender.Failure(f"{type(exc).__name__}: {exc}") for d in batch}
            for d in batch:
                failure = outcome.get(d.path, sender.Failure("not sent"))
                if failure is None:
                    self._until_recorded("result_sent", partial(self.queue.delivered, d))
                    logs.event("result_sent", job=d.job_id, destination=name)
                    continue
                c = self.config
                failed = partial(
                    self.queue.delivery_failed, d, failure.reason, c.retry_backoff_s, c.max_backoff_s, failure.final
                )
                self._until_recorded("result_not_sent", failed)
                level = logging.ERROR if failure.final else logging.WARNING
                logs.event(
                    "result_not_sent", level, job=d.job_id, destination=name, error=failure.reason, final=failure.final
                )
                if failure.final:
                    self.queue.count("deliveries_failed")
        return False

    def _clean_up(self) -> bool:
        """Retention: a finished study's instances and job folders go after `retention_days`; quarantined
        files after `quarantine_days`."""
        self.purge_finished()
        removed = self.spool.clean(self.config.quarantine_days)
        if removed:
            logs.event("quarantine_cleaned", files=removed)
        return False

    def purge_finished(self) -> int:
        studies = self.queue.finished_studies(self.config.retention_days * 86400)
        for study, jobs in studies:
            shutil.rmtree(self.spool.study_dir(study), ignore_errors=True)
            for job in jobs:
                shutil.rmtree(self.spool.job_dir(job), ignore_errors=True)
            self.queue.purged(study)
            logs.event("study_purged", study=key(study), jobs=jobs)
        return len(studies)

    # --- life cycle ------------------------------------------------------------------------
    def status(self) -> dict:
        return {
            "counts": self.queue.counts(),
            "latency": self.queue.latencies(),
            "spool_free_bytes": self.spool.free_bytes(),
            # this process's open associations (each receiving process serves its own)
            "associations_open": len(self._scp.active_associations) if self._scp is not None else 0,
            "receiver_pids": [os.getpid(), *self._receivers.pids],
        }

    def _end_interrupted(self) -> None:
        """Jobs found running at start belonged to a listener that died: whatever is left of them (a
        process tree that escaped, a container, a cluster Job) is ended; one whose app had finished (its
        supervisor recorded status 0) is recorded done with its results instead of running again."""
        for job in self.queue.interrupted_jobs():
            route = self.routes.get(job.route)
            left = stop_job(route, job, self.spool.job_dir(job.id))
            results = finished_before_a_crash(self.spool.job_dir(job.id)) if route is not None else None
            if results:
                self.queue.finish_job(job, results, route.destination)
                logs.event("job_done", job=job.id, route=job.route, results=len(results), recovered=True)
                continue
            logs.event("job_interrupted", logging.WARNING if left is None else logging.ERROR, job=job.id, error=left)

    def start(self) -> None:
        # Before anything receives: a file renamed into incoming/ by a receiver killed before it recorded
        # it was never acknowledged and is nobody's (it stayed for ever, with its PHI; finding 10).
        orphans = self.queue.unrecorded([p for p in (self.spool.root / "incoming").rglob("*") if p.is_file()])
        for path in orphans:
            path.unlink(missing_ok=True)
        if orphans:
            logs.event("unrecorded_removed", logging.WARNING, files=len(orphans))
        self._end_interrupted()
        resumed = self.queue.recover()
        reopened = self.queue.restarted()
        poll, hourly = self.config.poll_s, max(self.config.poll_s, 60.0)
        loops = [
            ("complete", partial(self._forever, self._complete_studies, poll)),
            ("deliver", partial(self._forever, self._deliver, poll)),
            ("clean-up", partial(self._forever, self._clean_up, hourly)),
        ]
        loops += [(f"worker-{i}", self._work) for i in range(self.config.workers)]
        for name, target in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self._scp = scp.start_scp(self.config, self.spool, self.queue)
        self._receivers.start()
        if self.config.health_port is not None:
            self._health = health.serve(self.config.health_host, self.config.health_port, self.status)
        logs.event(
            "listening",
            ae_title=self.config.ae_title,
            port=self.config.port,
            resumed_jobs=resumed,
            receiving_studies=reopened,
            tls=self.config.tls is not None,
            receivers=self.config.receivers,
        )

    def stop(self) -> None:
        self._receivers.stop()
        if self._scp is not None:
            self._scp.shutdown()
        if self._health is not None:
            self._health.shutdown()
        self._stop.set()
        # A running job is ended whole (its process tree, and through the route's `stop` what it started
        # elsewhere: a container, a cluster Job) and stays recorded running, so the next start runs it
        # again; leaving it would let a container run on unowned beside that rerun.
        with self._running_lock:
            running = list(self._running.values())
        for job in running:
            left = stop_job(self.routes.get(job.route), job, self.spool.job_dir(job.id))
            if left:
                logs.event("job_not_stopped", logging.ERROR, job=job.id, route=job.route, error=left)
        for t in self._threads:
            t.join(timeout=5)
        if not any(t.is_alive() for t in self._threads):  # a job still running keeps its connection
            self.queue.close()
        if self._spool_lock is not None:  # the spool is free for the next listener
            os.close(self._spool_lock)
            self._spool_lock = None

    def serve(self) -> None:
        """Run until SIGINT/SIGTERM."""
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        try:
            done.wait()
        finally:
            self.stop()
            logs.event("stopped")
