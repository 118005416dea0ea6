"""The durable spool: an instance is on disk (written, fsynced, renamed) before the sender hears success.

Layout under the spool root:
  receiving/<tmp>.dcm                      instances as they arrive (pynetdicom writes them in chunks)
  incoming/<study>/<series>/<sop>.<digest>.dcm  received instances (names are hashes of the UIDs and
                                           of the content, so a conflicting resend never overwrites)
  quarantine/<time>-<n>.dcm + .txt         what could not be stored, with the reason (quota, retention)
  jobs/<job id>/                           scratch and results of each job
  listener.lock                            held (flock) by the one listener that owns the spool; its pid
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import os
import shutil
import time
from pathlib import Path

from oncoplan.errors import InputError

FREE_SPACE_INTERVAL_S = 1.0
LOCK_FILE = "listener.lock"


class SpoolFull(OSError):
    """Less free space than the configured reserve: refuse rather than risk a torn file."""


class SpoolInUse(InputError):
    """Another listener holds the spool: a second one must not touch it (one line, exit status 2)."""


def hold(root: Path) -> int:
    """Take the spool at `root` for this listener, before anything in it is touched: an exclusive,
    non-blocking flock on its lock file, held until the returned descriptor is closed (or the process
    dies; the descriptor is not inherited by children). SpoolInUse, naming the holder's pid, when another
    listener holds it: a second `oncoplan listen` on the same configuration would otherwise clean the
    live one's arrivals and end its running jobs as interrupted. The listener's receiving processes are
    its children and do not take it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        who = f"pid {holder}" if holder.isdigit() else "pid unknown"
        raise SpoolInUse(f"another listener ({who}) holds the spool {root}; stop it first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def key(uid: str) -> str:
    """A file-system-safe, identifier-free name for a UID (logs and paths carry this, never the UID)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:20]


def digest_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    """fsync a file or a folder (a folder's entry for a renamed file) by path."""
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
        _fsync(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def move_durably(src: Path, path: Path) -> None:
    """Move the finished file `src` (on the spool's file system) to `path`: whole or absent after a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _fsync(src)
    os.replace(src, path)
    _fsync(path.parent)


class Spool:
    def __init__(
        self,
        root: Path,
        min_free_mb: float,
        clean_torn: bool = True,
        quarantine_max_mb: float = 1024.0,
    ) -> None:
        self.root = Path(root)
        self.min_free = int(min_free_mb * 1024 * 1024)
        self.quarantine_max = int(quarantine_max_mb * 1024 * 1024)
        self._free, self._free_at = 0, -1.0  # statvfs once per interval, not per instance
        self.largest = 0  # the largest instance stored so far: the room a new association needs
        self._counter = itertools.count()
        for sub in ("incoming", "quarantine", "jobs", "receiving"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if not clean_torn:  # another process shares the spool and may be writing right now
            return
        torn = (
            *self.root.glob("incoming/**/.*.partial"),
            *self.root.glob("quarantine/.*.partial"),
            *self.receiving.iterdir(),
        )
        for path in torn:
            path.unlink(missing_ok=True)  # writes cut short by a crash; never acknowledged, never recorded

    @property
    def receiving(self) -> Path:
        """Where pynetdicom writes arriving datasets: on the spool's file system, so storing is a rename."""
        return self.root / "receiving"

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str, digest: str) -> Path:
        return self.root / "incoming" / key(study_uid) / key(series_uid) / f"{key(sop_uid)}.{digest[:16]}.dcm"

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

    def store(self, received: Path, study_uid: str, series_uid: str, sop_uid: str, digest: str) -> Path:
        """Durably keep the received file `received` as this instance (a new name per content)."""
        size = received.stat().st_size
        if not self.has_room(0):  # the file already takes its room: the reserve must still be left
            raise SpoolFull(errno.ENOSPC, f"spool below its {self.min_free // 2**20} MB reserve")
        path = self.instance_path(study_uid, series_uid, sop_uid, digest)
        try:
            move_durably(received, path)
        except OSError:
            self._free_at = -1.0  # re-read the free space next time
            raise
        self.largest = max(self.largest, size)
        return path

    def quarantine_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.root / "quarantine").iterdir() if p.is_file())

    def quarantine(self, source: Path | bytes, reason: str) -> Path | None:
        """Keep what could not be stored, with the reason beside it, for a person to look at. Nothing is
        kept (None) when that would pass the quarantine's quota or the spool's free-space reserve: a flood
        of malformed instances must not fill the disk that good studies need."""
        size = source.stat().st_size if isinstance(source, Path) else len(source)
        if self.quarantine_bytes() + size > self.quarantine_max or not self.has_room(size + 4096):
            return None
        stem = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{next(self._counter)}"
        path = self.root / "quarantine" / f"{stem}.dcm"
        try:
            if isinstance(source, Path):
                move_durably(source, path)
            else:
                write_durably(path, source)
            write_durably(path.with_suffix(".txt"), (reason + "\n").encode())
        except OSError:
            path.unlink(missing_ok=True)  # a full disk must not also leave a torn quarantine file
            return None
        return path

    def clean(self, quarantine_days: float) -> int:
        """Quarantined files older than `quarantine_days`, and arrivals abandoned for a day (a transfer cut
        off mid-instance), are deleted: the number removed."""
        now, removed = time.time(), 0
        for folder, age in ((self.root / "quarantine", quarantine_days * 86400), (self.receiving, 86400.0)):
            for path in folder.iterdir():
                if path.is_file() and now - path.stat().st_mtime > age:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed
