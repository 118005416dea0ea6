"""The listener's persistent state in one SQLite file: instances, studies, jobs and deliveries.

Every transition is one transaction (WAL, synchronous=FULL), so a kill -9 at any point leaves
a state the listener resumes from: a job that was running goes back to pending; a job is
marked done in the same transaction that queues its results for delivery.

A study is assembled by (StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) and belongs to one
patient (PatientID + IssuerOfPatientID + name + birth date, kept as a hash). DICOM requires every UID to
be unique, so an instance that contradicts what is held (its series or SOP UID already placed in another study, another
patient's instance in this study, a SOP UID resent with other bytes) is a conflict: refused and counted,
never mixed in, never swapped for the stored one.

A study has generations: new content arriving after the study was routed opens the next generation,
and after the quiet period the study is routed again (one job per route and generation, its inputs
fixed in `job_inputs` when it is created). Identical resends are acknowledged and change nothing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from oncoplan.errors import InputError

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY, patient TEXT NOT NULL, state TEXT NOT NULL, first_received REAL NOT NULL,
    last_received REAL NOT NULL, generation INTEGER NOT NULL DEFAULT 1, routed_generation INTEGER NOT NULL DEFAULT 0,
    late_instances INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL REFERENCES studies(study_uid), attrs TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL, digest TEXT NOT NULL,
    path TEXT NOT NULL, received REAL NOT NULL, generation INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY, study_uid TEXT NOT NULL, route TEXT NOT NULL, generation INTEGER NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL, created REAL NOT NULL,
    started REAL, finished REAL, error TEXT, inputs INTEGER NOT NULL DEFAULT 0, token TEXT,
    UNIQUE (study_uid, route, generation));
CREATE TABLE IF NOT EXISTS job_inputs (
    job_id INTEGER NOT NULL REFERENCES jobs(id), sop_uid TEXT NOT NULL, PRIMARY KEY (job_id, sop_uid));
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL REFERENCES jobs(id), path TEXT NOT NULL,
    destination TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL, error TEXT, sent REAL, UNIQUE (job_id, path));
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS instances_by_study ON instances (study_uid);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, not_before);
CREATE INDEX IF NOT EXISTS deliveries_by_state ON deliveries (state, not_before);
CREATE INDEX IF NOT EXISTS studies_by_state ON studies (state, last_received);
"""
SERIES_KEYS = ("Modality", "SeriesDescription", "SeriesNumber", "BodyPartExamined", "StudyDescription", "SOPClassUID")
# The counters /metrics reports (instances and associations that did not go the plain way).
COUNTERS = (
    "instances_quarantined",
    "instances_conflicting",
    "instances_duplicate",
    "instances_late",
    "instances_too_large",
    "instances_refused_full",
    "associations_refused",
    "associations_aborted",
    "deliveries_failed",
)


class Recorded(Enum):
    """What recording an instance did."""

    STORED = "stored"  # new content in a study's first generation
    LATE = "late"  # new content after the study was first routed: the next generation, routed again
    DUPLICATE = "duplicate"  # the same bytes are already held: nothing changes
    RESTORED = "restored"  # the same bytes as an instance retention removed: kept again until retention
    CONFLICT = "conflict"  # contradicts what is held (see `conflict`)


@dataclass(frozen=True)
class Outcome:
    recorded: Recorded
    conflict: str | None = None  # why, without identifiers
    reopened: bool = False  # this instance reopened a routed study
    held: str | None = None  # for a SOP UID resent with other bytes: the stored file, to compare datasets


@dataclass(frozen=True)
class Job:
    id: int
    study_uid: str
    route: str
    attempts: int
    token: str = ""


@dataclass(frozen=True)
class Routing:
    """What `JobQueue.route_study` did with a quiet study: the jobs it queued, and how many of the study's
    instances the retention had deleted (while any has, a new generation queues none)."""

    jobs: list[int]
    purged: int


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
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        held = self._db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'jobs'").fetchone()[0]
        if held and version != SCHEMA_VERSION:
            self._db.close()
            raise InputError(
                f"{path}: state file of another listener version (schema {version}, this one reads "
                f"{SCHEMA_VERSION}); let that listener finish its jobs, then move the file aside"
            )
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
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

    def _read(self, sql: str, args: Iterable = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- receiving -------------------------------------------------------------------------
    def record_instance(
        self, study: str, series: str, sop: str, patient: str, digest: str, path: Path, attrs: dict
    ) -> Outcome:
        """Record an instance whose bytes are durably at `path` (content-addressed, so a conflicting
        resend never overwrote the stored one). The caller removes `path` unless STORED, LATE or RESTORED."""
        now = time.time()
        with self._tx() as db:
            held = db.execute(
                "SELECT study_uid, series_uid, digest, path FROM instances WHERE sop_uid = ?", (sop,)
            ).fetchone()
            if held is not None:
                if (held[0], held[1]) != (study, series):
                    where = "study" if held[0] != study else "series"
                    return Outcome(Recorded.CONFLICT, f"SOP Instance UID already held in another {where}")
                if held[2] != digest:
                    return Outcome(Recorded.CONFLICT, "SOP Instance UID resent with different content", held=held[3])
                if held[3] and Path(held[3]).exists():
                    return Outcome(Recorded.DUPLICATE)
                db.execute("UPDATE instances SET path = ? WHERE sop_uid = ?", (str(path), sop))
                db.execute(  # a purged study, or one waiting unrouted for what the retention deleted
                    "UPDATE studies SET state = 'receiving', last_received = ? WHERE study_uid = ? "
                    "AND (state = 'purged' OR (state = 'complete' AND generation > routed_generation))",
                    (now, study),
                )
                return Outcome(Recorded.RESTORED)
            owner = db.execute("SELECT study_uid FROM series WHERE series_uid = ?", (series,)).fetchone()
            if owner is not None and owner[0] != study:
                return Outcome(Recorded.CONFLICT, "Series Instance UID already held in another study")
            row = db.execute(
                "SELECT patient, generation, routed_generation FROM studies WHERE study_uid = ?", (study,)
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO studies (study_uid, patient, state, first_received, last_received) "
                    "VALUES (?, ?, 'receiving', ?, ?)",
                    (study, patient, now, now),
                )
                row = (patient, 1, 0)
            elif row[0] != patient:
                return Outcome(
                    Recorded.CONFLICT,
                    "patient (PatientID, IssuerOfPatientID, name, birth date) differs from the study's",
                )
            outcome, generation = Outcome(Recorded.LATE if row[1] > 1 else Recorded.STORED), row[1]
            if row[1] <= row[2]:  # new content after its generation was routed: the next one, routed again
                outcome, generation = Outcome(Recorded.LATE, reopened=True), row[1] + 1
                db.execute(
                    "UPDATE studies SET generation = ?, late_instances = late_instances + 1 WHERE study_uid = ?",
                    (generation, study),
                )
            db.execute("UPDATE studies SET state = 'receiving', last_received = ? WHERE study_uid = ?", (now, study))
            db.execute("INSERT OR IGNORE INTO series VALUES (?, ?, ?)", (series, study, json.dumps(attrs)))
            db.execute(
                "INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sop, study, series, digest, str(path), now, generation),
            )
            return outcome

    def restarted(self) -> int:
        """After a start: the quiet period of a study still receiving counts from now, so a study cut
        short by the crash is not taken as complete before its sender had a chance to resend."""
        with self._tx() as db:
            return db.execute(
                "UPDATE studies SET last_received = MAX(last_received, ?) WHERE state = 'receiving'", (time.time(),)
            ).rowcount

    def quiet_studies(self, quiet_s: float) -> list[str]:
        rows = self._read(
            "SELECT study_uid FROM studies WHERE state = 'receiving' AND last_received <= ?", (time.time() - quiet_s,)
        )
        return [r[0] for r in rows]

    def study_series(self, study: str) -> dict[str, dict]:
        rows = self._read("SELECT series_uid, attrs FROM series WHERE study_uid = ?", (study,))
        return {uid: json.loads(attrs) for uid, attrs in rows}

    def route_study(self, study: str, routes: dict[str, list[str]], quiet_s: float) -> Routing | None:
        """Close the study and queue one job per route (`routes`: route name -> the series it takes) for
        the study's generation, its inputs fixed now; a generation that brought no new content (only
        identical resends) queues none. None when an instance arrived since the study was found quiet."""
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT generation, routed_generation FROM studies "
                "WHERE study_uid = ? AND state = 'receiving' AND last_received <= ?",
                (study, now - quiet_s),
            ).fetchone()
            if row is None:
                return None
            generation, routed = row
            purged = db.execute(
                "SELECT COUNT(*) FROM instances WHERE study_uid = ? AND path = ''", (study,)
            ).fetchone()[0]
            if generation > routed and purged:
                # New instances of a study whose others the retention deleted: no route runs on a part
                # (a late instance re-ran the route on itself alone, hostile test finding 5). The study waits,
                # unrouted, for the whole of it to be sent again (RESTORED reopens it) or for its retention.
                db.execute("UPDATE studies SET state = 'complete' WHERE study_uid = ?", (study,))
                return Routing([], purged)
            db.execute(
                "UPDATE studies SET state = 'complete', routed_generation = ? WHERE study_uid = ?", (generation, study)
            )
            if generation <= routed:
                return Routing([], purged)
            jobs = []
            for route, series in routes.items():
                cur = db.execute(
                    "INSERT OR IGNORE INTO jobs (study_uid, route, generation, state, not_before, created) "
                    "VALUES (?, ?, ?, 'pending', ?, ?)",
                    (study, route, generation, now, now),
                )
                if not cur.rowcount:
                    continue
                marks = ",".join("?" * len(series))
                db.execute(
                    f"INSERT INTO job_inputs SELECT ?, sop_uid FROM instances WHERE study_uid = ? AND path != '' "
                    f"AND series_uid IN ({marks})",
                    (cur.lastrowid, study, *series),
                )
                db.execute(
                    "UPDATE jobs SET inputs = (SELECT COUNT(*) FROM job_inputs WHERE job_id = ?) WHERE id = ?",
                    (cur.lastrowid, cur.lastrowid),
                )
                jobs.append(cur.lastrowid)
        return Routing(jobs, purged)

    def unrecorded(self, files: list[Path]) -> list[Path]:
        """Of `files` (what incoming/ holds), those no instance names: renamed in by a receiver that died
        before recording them, so never acknowledged to their sender. Only while nothing receives."""
        recorded = {os.path.realpath(r[0]) for r in self._read("SELECT path FROM instances WHERE path != ''")}
        return [f for f in files if os.path.realpath(f) not in recorded]

    def job_inputs(self, job: int) -> list[tuple[str, Path]]:
        """(series UID, file) of every instance the job was created with."""
        rows = self._read(
            "SELECT i.series_uid, i.path FROM job_inputs j JOIN instances i ON i.sop_uid = j.sop_uid "
            "WHERE j.job_id = ? ORDER BY i.series_uid, i.sop_uid",
            (job,),
        )
        return [(series, Path(path)) for series, path in rows]

    def finished_studies(self, older_than_s: float) -> list[tuple[str, list[int]]]:
        """Studies complete for longer than `older_than_s`, whose every job ended (done or failed) and every
        result was delivered or given up: (study, job ids), for the retention clean-up."""
        cutoff = time.time() - older_than_s
        rows = self._read(
            "SELECT s.study_uid, GROUP_CONCAT(j.id) FROM studies s LEFT JOIN jobs j ON j.study_uid = s.study_uid "
            "WHERE s.state = 'complete' AND s.last_received <= ? GROUP BY s.study_uid "
            "HAVING COALESCE(SUM(j.state NOT IN ('done', 'failed')), 0) = 0 AND COALESCE(MAX(j.finished), 0) <= ? "
            "AND NOT EXISTS (SELECT 1 FROM deliveries d JOIN jobs k ON d.job_id = k.id "
            "WHERE k.study_uid = s.study_uid AND d.state = 'pending')",
            (cutoff, cutoff),
        )
        return [(study, [int(i) for i in ids.split(",")] if ids else []) for study, ids in rows]

    def purged(self, study: str) -> None:
        """The study's files are gone; its rows stay, so a resend is recognised and not run again."""
        with self._tx() as db:
            db.execute("UPDATE studies SET state = 'purged' WHERE study_uid = ? AND state = 'complete'", (study,))
            db.execute("UPDATE instances SET path = '' WHERE study_uid = ?", (study,))

    # --- jobs ------------------------------------------------------------------------------
    def interrupted_jobs(self) -> list[Job]:
        """Jobs recorded running: after a restart, their process trees must be ended before they run again."""
        rows = self._read(
            "SELECT id, study_uid, route, attempts, COALESCE(token, '') FROM jobs WHERE state = 'running'"
        )
        return [Job(*r) for r in rows]

    def recover(self) -> int:
        """After a restart (and after the interrupted jobs' processes were ended): they run again."""
        with self._tx() as db:
            return db.execute(
                "UPDATE jobs SET state = 'pending', not_before = ? WHERE state = 'running'", (time.time(),)
            ).rowcount

    def claim_job(self, token: str) -> Job | None:
        """The next due job, marked running with `token` (the mark its process tree carries)."""
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
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, started = ?, token = ? WHERE id = ?",
                (now, token, row[0]),
            )
        return Job(row[0], row[1], row[2], row[3] + 1, token)

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
        rows = self._read(
            "SELECT id, job_id, path, destination, attempts FROM deliveries "
            "WHERE state = 'pending' AND not_before <= ? ORDER BY id LIMIT ?",
            (time.time(), limit),
        )
        return [Delivery(r[0], r[1], Path(r[2]), r[3], r[4]) for r in rows]

    def delivered(self, delivery: Delivery) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET state = 'sent', sent = ?, error = NULL, attempts = attempts + 1 WHERE id = ?",
                (time.time(), delivery.id),
            )

    def delivery_failed(
        self, delivery: Delivery, error: str, backoff_s: float, max_backoff_s: float, final: bool = False
    ) -> None:
        """A result waits, backing off, until the destination acknowledges it; `final`: it can never be
        sent (it cannot be read or encoded), so it is recorded failed instead of retried for ever."""
        delay = min(max_backoff_s, backoff_s * 2**delivery.attempts)
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, not_before = ?, error = ?, state = ? WHERE id = ?",
                (time.time() + delay, error[-2000:], "failed" if final else "pending", delivery.id),
            )

    # --- reporting -------------------------------------------------------------------------
    def count(self, name: str, n: int = 1) -> None:
        """Add to one of COUNTERS (shared by every receiving process through the file)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET n = n + excluded.n", (name, n)
            )

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for table in ("studies", "jobs", "deliveries"):
                rows = self._db.execute(f"SELECT state, COUNT(*) FROM {table} GROUP BY state").fetchall()
                out[table] = dict(rows)
            out["instances"] = {"received": self._db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]}
            out["events"] = dict.fromkeys(COUNTERS, 0) | dict(self._db.execute("SELECT name, n FROM counters"))
        return out

    def latencies(self) -> dict[str, float]:
        """Median and 95th percentile of job run time and of study-complete-to-results-sent time (s)."""
        runs = [r[0] for r in self._read("SELECT finished - started FROM jobs WHERE state = 'done'")]
        ends = [
            r[0]
            for r in self._read(
                "SELECT MAX(d.sent) - s.last_received FROM deliveries d JOIN jobs j ON d.job_id = j.id "
                "JOIN studies s ON s.study_uid = j.study_uid WHERE d.state = 'sent' GROUP BY j.id"
            )
        ]
        out: dict[str, float] = {}
        for name, values in (("job_run_s", runs), ("study_to_result_s", ends)):
            if values:
                out[f"{name}_median"] = statistics.median(values)
                out[f"{name}_p95"] = statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]
        return out
