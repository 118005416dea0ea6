"""The listener's persistent state in one SQLite file: instances, studies, jobs and deliveries.

Every transition is one transaction (WAL, synchronous=FULL), so a kill -9 at any point leaves
a state the listener resumes from: a job that was running goes back to pending; a job is
marked done in the same transaction that queues its results for delivery; `UNIQUE(study,
route)` makes each study run at most once per route.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL,
    path TEXT NOT NULL, received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, attrs TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY, state TEXT NOT NULL, first_received REAL NOT NULL,
    last_received REAL NOT NULL, late_instances INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY, study_uid TEXT NOT NULL, route TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL, created REAL NOT NULL,
    started REAL, finished REAL, error TEXT, UNIQUE (study_uid, route));
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL REFERENCES jobs(id), path TEXT NOT NULL,
    destination TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL, error TEXT, sent REAL, UNIQUE (job_id, path));
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, not_before);
CREATE INDEX IF NOT EXISTS deliveries_by_state ON deliveries (state, not_before);
CREATE INDEX IF NOT EXISTS studies_by_state ON studies (state, last_received);
"""
SERIES_KEYS = ("Modality", "SeriesDescription", "SeriesNumber", "BodyPartExamined", "StudyDescription", "SOPClassUID")


@dataclass(frozen=True)
class Job:
    id: int
    study_uid: str
    route: str
    attempts: int


@dataclass(frozen=True)
class Delivery:
    id: int
    job_id: int
    path: Path
    destination: str
    attempts: int


# How long a transaction waits for another process's write lock before it fails (and is logged:
# the receiving processes, the listener's loops and a health probe share the file).
BUSY_TIMEOUT_S = 30.0


class JobQueue:
    """Thread-safe access to the state file; one connection, one lock, short transactions."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- receiving -------------------------------------------------------------------------
    def record_instance(self, study: str, series: str, sop: str, path: Path, attrs: dict) -> bool:
        """Record a stored instance; False when its study was already handed to the routes (late)."""
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?)", (sop, study, series, str(path), now))
            db.execute("INSERT OR IGNORE INTO series VALUES (?, ?, ?)", (series, study, json.dumps(attrs)))
            row = db.execute("SELECT state FROM studies WHERE study_uid = ?", (study,)).fetchone()
            if row is None:
                db.execute("INSERT INTO studies VALUES (?, 'receiving', ?, ?, 0)", (study, now, now))
                return True
            if row[0] == "receiving":
                db.execute("UPDATE studies SET last_received = ? WHERE study_uid = ?", (now, study))
                return True
            db.execute("UPDATE studies SET late_instances = late_instances + 1 WHERE study_uid = ?", (study,))
            return False

    def quiet_studies(self, quiet_s: float) -> list[str]:
        cutoff = time.time() - quiet_s
        with self._lock:
            rows = self._db.execute(
                "SELECT study_uid FROM studies WHERE state = 'receiving' AND last_received <= ?", (cutoff,)
            ).fetchall()
        return [r[0] for r in rows]

    def study_series(self, study: str) -> dict[str, dict]:
        with self._lock:
            rows = self._db.execute("SELECT series_uid, attrs FROM series WHERE study_uid = ?", (study,)).fetchall()
        return {uid: json.loads(attrs) for uid, attrs in rows}

    def series_files(self, series: str) -> list[Path]:
        with self._lock:
            rows = self._db.execute("SELECT path FROM instances WHERE series_uid = ?", (series,)).fetchall()
        return [Path(r[0]) for r in rows]

    def route_study(self, study: str, routes: list[str], quiet_s: float) -> list[int] | None:
        """Close the study and queue one job per matching route (never a second one); None when an
        instance arrived since the study was found quiet (it stays open)."""
        now = time.time()
        with self._tx() as db:
            closed = db.execute(
                "UPDATE studies SET state = ? WHERE study_uid = ? AND state = 'receiving' AND last_received <= ?",
                ("routed" if routes else "unrouted", study, now - quiet_s),
            ).rowcount
            if not closed:
                return None
            for route in routes:
                db.execute(
                    "INSERT OR IGNORE INTO jobs (study_uid, route, state, not_before, created) "
                    "VALUES (?, ?, 'pending', ?, ?)",
                    (study, route, now, now),
                )
            rows = db.execute("SELECT id FROM jobs WHERE study_uid = ?", (study,)).fetchall()
        return [r[0] for r in rows]

    def finished_studies(self, older_than_s: float) -> list[tuple[str, list[int]]]:
        """Studies whose every job ended (done or failed) and every result was sent, longer ago than
        `older_than_s`: (study, job ids), for the retention clean-up."""
        cutoff = time.time() - older_than_s
        with self._lock:
            rows = self._db.execute(
                "SELECT s.study_uid, GROUP_CONCAT(j.id) FROM studies s LEFT JOIN jobs j ON j.study_uid = s.study_uid "
                "WHERE s.state IN ('routed', 'unrouted') AND s.last_received <= ? GROUP BY s.study_uid "
                "HAVING COALESCE(SUM(j.state NOT IN ('done', 'failed')), 0) = 0 AND COALESCE(MAX(j.finished), 0) <= ? "
                "AND NOT EXISTS (SELECT 1 FROM deliveries d JOIN jobs k ON d.job_id = k.id "
                "WHERE k.study_uid = s.study_uid AND d.state != 'sent')",
                (cutoff, cutoff),
            ).fetchall()
        return [(study, [int(i) for i in ids.split(",")] if ids else []) for study, ids in rows]

    def purged(self, study: str) -> None:
        """The study's files are gone; its rows stay, so a resend is recognised and not run again."""
        with self._tx() as db:
            db.execute("UPDATE studies SET state = 'purged' WHERE study_uid = ?", (study,))
            db.execute("UPDATE instances SET path = '' WHERE study_uid = ?", (study,))

    # --- jobs ------------------------------------------------------------------------------
    def recover(self) -> int:
        """After a restart: jobs that were running when the process died run again."""
        with self._tx() as db:
            return db.execute(
                "UPDATE jobs SET state = 'pending', not_before = ? WHERE state = 'running'", (time.time(),)
            ).rowcount

    def claim_job(self) -> Job | None:
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT id, study_uid, route, attempts FROM jobs WHERE state = 'pending' AND not_before <= ? "
                "ORDER BY id LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, started = ? WHERE id = ?", (now, row[0])
            )
        return Job(row[0], row[1], row[2], row[3] + 1)

    def finish_job(self, job: Job, results: list[Path], destination: str) -> None:
        """Done and its results queued for delivery: one transaction, so neither happens alone."""
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE jobs SET state = 'done', finished = ?, error = NULL WHERE id = ?", (now, job.id))
            db.executemany(
                "INSERT OR IGNORE INTO deliveries (job_id, path, destination, state, not_before) "
                "VALUES (?, ?, ?, 'pending', ?)",
                [(job.id, str(p), destination, now) for p in results],
            )

    def fail_job(self, job: Job, error: str, max_attempts: int, backoff_s: float, max_backoff_s: float) -> str:
        """Back to pending after an exponential back-off, or failed for good after `max_attempts`."""
        now = time.time()
        final = job.attempts >= max_attempts
        delay = min(max_backoff_s, backoff_s * 2 ** (job.attempts - 1))
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = ?, not_before = ?, finished = ?, error = ? WHERE id = ?",
                ("failed" if final else "pending", now + delay, now, error[-2000:], job.id),
            )
        return "failed" if final else "pending"

    # --- deliveries ------------------------------------------------------------------------
    def due_deliveries(self, limit: int = 64) -> list[Delivery]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, job_id, path, destination, attempts FROM deliveries "
                "WHERE state = 'pending' AND not_before <= ? "
                "ORDER BY id LIMIT ?",
                (time.time(), limit),
            ).fetchall()
        return [Delivery(r[0], r[1], Path(r[2]), r[3], r[4]) for r in rows]

    def delivered(self, delivery: Delivery) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET state = 'sent', sent = ?, error = NULL, attempts = attempts + 1 WHERE id = ?",
                (time.time(), delivery.id),
            )

    def delivery_failed(self, delivery: Delivery, error: str, backoff_s: float, max_backoff_s: float) -> None:
        """Never given up: a result waits, backing off, until the destination acknowledges it."""
        delay = min(max_backoff_s, backoff_s * 2**delivery.attempts)
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, not_before = ?, error = ? WHERE id = ?",
                (time.time() + delay, error[-2000:], delivery.id),
            )

    # --- reporting -------------------------------------------------------------------------
    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for table in ("studies", "jobs", "deliveries"):
                rows = self._db.execute(f"SELECT state, COUNT(*) FROM {table} GROUP BY state").fetchall()
                out[table] = dict(rows)
            out["instances"] = {"received": self._db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]}
        return out

    def latencies(self) -> dict[str, float]:
        """Median and 95th percentile of job run time and of study-complete-to-results-sent time (s)."""
        with self._lock:
            runs = [
                r[0] for r in self._db.execute("SELECT finished - started FROM jobs WHERE state = 'done'").fetchall()
            ]
            ends = [
                r[0]
                for r in self._db.execute(
                    "SELECT MAX(d.sent) - s.last_received FROM deliveries d JOIN jobs j ON d.job_id = j.id "
                    "JOIN studies s ON s.study_uid = j.study_uid WHERE d.state = 'sent' GROUP BY j.id"
                ).fetchall()
            ]
        out: dict[str, float] = {}
        for name, values in (("job_run_s", runs), ("study_to_result_s", ends)):
            if values:
                out[f"{name}_median"] = statistics.median(values)
                out[f"{name}_p95"] = statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]
        return out
