"""The durable spool: an instance is on disk (written, fsynced, renamed) before the sender hears success.

Layout under the spool root:
  incoming/<study>/<series>/<sop>.dcm  received instances (names are hashes of the UIDs)
  quarantine/<time>-<n>.dcm + .txt     what could not be stored, with the reason
  jobs/<job id>/                       scratch and results of each job
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import shutil
import time
from pathlib import Path

FREE_SPACE_INTERVAL_S = 1.0


class SpoolFull(OSError):
    """Less free space than the configured reserve: refuse rather than risk a torn file."""


def key(uid: str) -> str:
    """A file-system-safe, identifier-free name for a UID (logs and paths carry this, never the UID)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:20]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that after a crash the file is either absent or whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.partial")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Spool:
    def __init__(self, root: Path, min_free_mb: float, clean_torn: bool = True) -> None:
        self.root = Path(root)
        self.min_free = int(min_free_mb * 1024 * 1024)
        self._free, self._free_at = 0, -1.0  # statvfs once per interval, not per instance
        self.largest = 0  # the largest instance stored so far: the room a new association needs
        self._counter = itertools.count()
        for sub in ("incoming", "quarantine", "jobs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if not clean_torn:  # another process shares the spool and may be writing right now
            return
        for torn in (*self.root.glob("incoming/**/.*.partial"), *self.root.glob("quarantine/.*.partial")):
            torn.unlink(missing_ok=True)  # writes cut short by a crash; never acknowledged, never recorded

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self.root / "incoming" / key(study_uid) / key(series_uid) / f"{key(sop_uid)}.dcm"

    def study_dir(self, study_uid: str) -> Path:
        return self.root / "incoming" / key(study_uid)

    def job_dir(self, job_id: int) -> Path:
        return self.root / "jobs" / str(job_id)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def has_room(self, size: int = 0) -> bool:
        now = time.monotonic()
        if now - self._free_at > FREE_SPACE_INTERVAL_S or self._free - size < self.min_free + 2**26:
            self._free, self._free_at = self.free_bytes(), now  # re-read when stale or near the reserve
        self._free -= size
        return self._free >= self.min_free

    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> Path:
        """Durably store one encoded instance (a resend of the same SOP instance replaces it)."""
        if not self.has_room(len(data)):
            raise SpoolFull(errno.ENOSPC, f"spool below its {self.min_free // 2**20} MB reserve")
        path = self.instance_path(study_uid, series_uid, sop_uid)
        try:
            write_durably(path, data)
        except OSError:
            self._free_at = -1.0  # re-read the free space next time
            raise
        self.largest = max(self.largest, len(data))
        return path

    def quarantine(self, data: bytes, reason: str) -> Path:
        """Keep what could not be stored, with the reason beside it, for a person to look at."""
        stem = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{next(self._counter)}"
        path = self.root / "quarantine" / f"{stem}.dcm"
        try:
            write_durably(path, data)
            write_durably(path.with_suffix(".txt"), (reason + "\n").encode())
        except OSError:
            path.unlink(missing_ok=True)  # a full disk must not also leave a torn quarantine file
            raise
        return path
