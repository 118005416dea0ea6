"""The Storage SCP: pynetdicom handlers with one job each, and the server that runs them.

Instances arrive into files (pynetdicom's chunked receive into the spool's `receiving/`), so memory
stays bounded whatever a sender sends; each is checked (UIDs by PS3.5 9.1, one patient per study,
whole pixel data, the request's UIDs equal to the dataset's) before it is stored and acknowledged.
Every connection is bounded in time (TLS handshake and association set-up, a PDU that stops part-way)
and in number (in all and per peer); every refusal and abnormal end is one log line with its reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
import sqlite3
import ssl
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, dimse_messages, evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from . import logs
from .config import ListenerConfig
from .queue import SERIES_KEYS, JobQueue, Recorded
from .spool import Spool, SpoolFull, digest_of, key

SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700
CANNOT_UNDERSTAND = 0xC210  # undecodable, missing or truncated
INVALID_UID = 0xC212  # a UID that is not one (PS3.5 9.1), or the request's UIDs differ from the dataset's
CONFLICT = 0xC213  # contradicts what is held: another patient's instance, a UID reused, other content
# A C-STORE whose durable write and record take longer than this is logged with where the time went:
# senders give up after their DIMSE timeout (pynetdicom's 30 s), so a stall should explain itself first.
SLOW_STORE_S = 5.0
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
UID_SYNTAX = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")  # PS3.5 9.1: digits, dots, no leading zeros
DEFER_BYTES = 64 * 1024  # values larger than this are left on disk while an instance is checked
MAX_PDU_BYTES = 4 * 2**20  # the maximum PDU length we announce (P-DATA-TF)
# What one PDU may claim before it is read: pynetdicom reads a whole PDU into memory at the length its
# header claims, so one peer's 1 GB "A-ASSOCIATE-RQ" cost 1.2 GB before any check (hostile test, finding
# 1). Association PDUs are a few KB (1 MiB leaves room for identity tokens); a P-DATA-TF may not exceed
# our announced maximum, with room for a sender that rounds it up.
MAX_ASSOCIATION_PDU_BYTES = 2**20
MAX_DATA_PDU_BYTES = 2 * MAX_PDU_BYTES
# A PDU arrives within pdu_timeout_s plus its length at this rate, or the connection ends: a per-read
# timeout alone let a peer dribble a byte every few seconds and hold a slot for ever (finding 2).
MIN_PDU_BYTES_PER_S = 16 * 1024
# Why pynetdicom's ACSE refused an association: (result, source, diagnostic) -> the reason we log.
REJECT_REASONS = {
    (0x01, 0x01, 0x03): "calling AE title not allowed",
    (0x01, 0x01, 0x07): "called AE title is not ours",
    (0x01, 0x01, 0x02): "application context not supported",
    (0x01, 0x02, 0x02): "protocol version not supported",
    (0x02, 0x02, 0x01): "user identity not verified",
    (0x02, 0x03, 0x02): "association limit reached",
}


class Refusal(Exception):
    """An instance the spool will not take: the reason (no identifiers) and the C-STORE status."""

    def __init__(self, reason: str, status: int = CANNOT_UNDERSTAND) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


@dataclass(frozen=True)
class Instance:
    study: str
    series: str
    sop: str
    patient: str  # a hash of PatientID and IssuerOfPatientID: the study's patient, compared, never logged
    attrs: dict


def valid_uid(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and UID_SYNTAX.match(value) is not None


def _uid(ds: Dataset, keyword: str) -> str:
    if keyword not in ds:
        raise Refusal(f"missing {keyword}")
    elem = ds[keyword]
    if elem.VR != "UI":
        raise Refusal(f"{keyword} has VR {elem.VR}, not UI", INVALID_UID)
    value = elem.value
    if isinstance(value, MultiValue) or not isinstance(value, str):
        raise Refusal(f"{keyword} is not a single UID", INVALID_UID)
    value = value.rstrip("\0 ")  # UI values are padded with one NUL to an even length
    if not value:
        raise Refusal(f"missing {keyword}")
    if not valid_uid(value):
        raise Refusal(f"{keyword} is not a valid UID (PS3.5 9.1: digits and dots, at most 64)", INVALID_UID)
    return value


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if isinstance(value, MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value or "").strip()


def same_dataset(held: Path, other: Path) -> bool:
    """Whether two files hold the same dataset in different encodings (a resend in another transfer
    syntax: implicit VR, or losslessly compressed): every element but the file meta and the pixel data
    equal, and the decoded pixels equal. Only for a SOP UID resent with other bytes (rare), so the
    decoding is paid there only; any doubt is False (a conflict)."""
    try:
        a, b = dcmread(held), dcmread(other)
        if a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID:
            return False  # the same encoding and other bytes: other content
        pixels = 0x7FE00010
        if any(str(ds.get("LossyImageCompression", "00")) != "00" for ds in (a, b)):
            return False
        # what a lossless compressor writes of itself (dcmcjpeg: "Lossless JPEG compression, ...")
        skip = {pixels, 0x00082111, 0x00282110}
        if [e for e in a if e.tag not in skip] != [e for e in b if e.tag not in skip]:
            return False
        if (pixels in a) != (pixels in b):
            return False
        return pixels not in a or bool(np.array_equal(a.pixel_array, b.pixel_array))
    except Exception:  # undecodable, unreadable: not shown to be the same
        return False


def patient_key(ds: Dataset) -> str:
    """Who an instance is about, as a hash: PatientID and its issuer, and the patient's name and birth date.
    Every instance of one study must agree on all four. The ID alone let two patients with a blank ID, or
    a reused ID, share one job (hostile test, finding 6); name and birth date are compared as written
    (the alphabetic name group, case and trailing separators ignored), since within one study they come
    from one registration."""
    name = str(ds.get("PatientName", "") or "").split("=")[0].upper().rstrip("^ ")
    parts = (_text(ds, "PatientID"), _text(ds, "IssuerOfPatientID"), name, _text(ds, "PatientBirthDate"))
    return hashlib.sha256("\\".join(parts).encode()).hexdigest()


def _pixel_problem(ds: Dataset, size: int) -> str | None:
    """Pixel data shorter than its own header says (a truncated dataset is refused, not stored torn)."""
    raw = ds.get_item("PixelData", keep_deferred=True)
    if raw is None or str(getattr(ds.file_meta, "TransferSyntaxUID", "")) not in UNCOMPRESSED:
        return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    need = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames * int(ds.BitsAllocated) // 8
    value = getattr(raw, "value", None)
    have = len(value) if value is not None else min(raw.length, size - raw.value_tell)
    return f"pixel data truncated ({have} of {need} bytes)" if have < need else None


def inspect(path: Path, request: Dataset | object) -> Instance:
    """Read and check a received instance (values over DEFER_BYTES stay on disk); Refusal if it cannot be
    stored. The file's meta (written by pynetdicom from the request) must agree with the dataset, so the
    stored file says what the dataset says."""
    try:
        ds = dcmread(path, defer_size=DEFER_BYTES)
        uids = {k: _uid(ds, k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")}
        for keyword, dataset_key in (
            ("AffectedSOPInstanceUID", "SOPInstanceUID"),
            ("AffectedSOPClassUID", "SOPClassUID"),
        ):
            if str(getattr(request, keyword, "") or "").rstrip("\0 ") != uids[dataset_key]:
                raise Refusal(f"the C-STORE request's {keyword} differs from the dataset's {dataset_key}", INVALID_UID)
        problem = _pixel_problem(ds, path.stat().st_size)
        if problem:
            raise Refusal(problem)
        patient = patient_key(ds)
        attrs = {k: _text(ds, k) for k in SERIES_KEYS}
    except Refusal:
        raise
    except Exception as exc:  # anything pydicom cannot parse is the sender's problem, not ours
        raise Refusal(
            f"cannot decode the dataset ({type(exc).__name__}: {logs.scrub(str(exc), quoted=True)})"
        ) from None
    return Instance(uids["StudyInstanceUID"], uids["SeriesInstanceUID"], uids["SOPInstanceUID"], patient, attrs)


# --- connections: one record per association, for limits and for one line on how it ended ------
@dataclass
class Connection:
    address: str
    accepted: bool = False
    ended: str | None = None  # how it ended when that was not a release: the reason logged
    detail: str | None = None  # what pynetdicom said went wrong, captured from its log
    detail_has_error: bool = False  # the detail names the exception behind it
    protocol_error: bool = False  # pynetdicom reported an error inside it (e.g. an undecodable command)
    logged: bool = False  # its closing line was written
    timer: threading.Timer | None = field(default=None, repr=False)
    arriving: list[Path] = field(default_factory=list, repr=False)  # its files in receiving/


def connection(assoc: Association) -> Connection:
    conn = getattr(assoc, "oncoplan_connection", None)
    if conn is None:
        conn = Connection(str(assoc.requestor.address))
        assoc.oncoplan_connection = conn  # type: ignore[attr-defined]
    return conn


def _cut(assoc: Association, why: str) -> None:
    """End a connection from any thread: shutting the socket down wakes a reader blocked in recv()."""
    conn = connection(assoc)
    conn.ended = conn.ended or why
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    if not conn.accepted and getattr(assoc.requestor, "primitive", None) is None:
        # pynetdicom's acceptor thread waits acse_timeout for the A-ASSOCIATE-RQ primitive, and a DUL that ends
        # without handing one up (it sent an A-ABORT for an undecodable PDU, or died on an exception) leaves it
        # waiting: the thread, its per-peer slot and the closing line waited out the timeout (CI, stop 37).
        # None is what that wait returns on a timeout, so the thread ends now, the same way.
        assoc.dul.to_user_queue.put(None)


def _raised_by_us(record: logging.LogRecord) -> bool:
    """pynetdicom logs an exception raised in an event handler ("Exception in handler bound to …", then the
    exception) and goes on."""
    if record.getMessage().startswith("Exception in handler bound to"):
        return True
    if record.exc_info and getattr(record.exc_info[1], "oncoplan_refusal", False):
        return False
    tb = record.exc_info[2] if record.exc_info else None
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("oncoplan."):
            return True
        tb = tb.tb_next
    return False


def association_of(thread: threading.Thread) -> Association | None:
    """The association a pynetdicom thread (its reactor or its DUL reader) works for."""
    assoc = thread.assoc if isinstance(thread, DULServiceProvider) else thread
    return assoc if isinstance(assoc, Association) else None


def capture_association_log(record: logging.LogRecord) -> bool:
    """What pynetdicom says from inside an association (an undecodable PDU, an odd AE title, a socket
    timeout) becomes the `detail` of that association's one closing line instead of lines of its own;
    an error before the association was accepted ends the connection at once."""
    assoc = association_of(threading.current_thread())
    if assoc is None or not assoc.is_acceptor:
        return False  # only what is said inside the associations we accept (not our own deliveries')
    if record.name.startswith(("pydicom", "py.warnings")):
        # pydicom's complaint about a value it reads while we inspect an instance (twice: logged and as a
        # warning): the instance's own line (stored, or refused with the reason) says what matters
        return record.levelno < logging.ERROR
    if not record.name.startswith("pynetdicom"):
        return False
    if _raised_by_us(record):
        return False  # an exception in one of our handlers is our defect: its own line, never folded away
    if record.levelno < logging.WARNING:
        return True
    conn = connection(assoc)
    # The first thing said, and the exception behind it when pynetdicom logs that next ("Unable to decode the
    # received PDU data", then the error): the closing line carries both.
    exc = record.exc_info[1] if record.exc_info else None
    said = f"{type(exc).__name__}: {exc}" if exc is not None else (record.getMessage().strip().splitlines() or [""])[0]
    said = logs.scrub(said, quoted=True)
    if conn.detail is None:
        conn.detail = said[:200]
    elif exc is not None and said not in conn.detail and not conn.detail_has_error:
        conn.detail = f"{conn.detail} ({said})"[:200]
    conn.detail_has_error = conn.detail_has_error or exc is not None
    conn.protocol_error = conn.protocol_error or record.levelno >= logging.ERROR
    if not conn.accepted and record.levelno >= logging.ERROR:
        _cut(assoc, "protocol error before the association was accepted")
    return True


logs.CAPTURES.append(capture_association_log)


class GuardedACSE(ACSE):
    """pynetdicom's ACSE that refuses the association itself (A-ASSOCIATE-RJ: rejected-transient, local
    limit exceeded) while the spool has no room for another instance, and remembers why it refused. It
    overrides pynetdicom's private `_negotiate_as_acceptor` and `send_reject` (pinned; tested)."""

    def __init__(self, assoc: Association, spool: Spool) -> None:
        super().__init__(assoc)
        self.spool = spool
        self.refused: str | None = None

    def _negotiate_as_acceptor(self) -> None:
        if self.spool.has_room(self.spool.largest):
            return super()._negotiate_as_acceptor()
        self.requestor.ae_title = self.requestor.primitive.calling_ae_title
        self.refused = "spool full (below its free-space reserve)"
        self.send_reject(0x02, 0x03, 0x02)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()
        return None

    def send_reject(self, result: int, source: int, diagnostic: int) -> None:
        self.refused = self.refused or REJECT_REASONS.get((result, source, diagnostic), "refused by negotiation")
        super().send_reject(result, source, diagnostic)


class ArrivingFile:
    """The file pynetdicom's chunked receive writes an arriving dataset into, made to fail that one
    instance instead of the association: past `limit` bytes, or when the disk is full (ENOSPC), it stops
    writing, gives its space back and says why (`problem`); the C-STORE is then answered 0xA700 and the
    association goes on. pynetdicom calls `NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")`
    from its module namespace, where start_scp puts `arriving_files(limit)` (pinned version; tested)."""

    def __init__(self, folder: Path, limit: int, **kwargs) -> None:
        kwargs["dir"] = folder
        self._fh = tempfile.NamedTemporaryFile(**kwargs)  # noqa: SIM115 - pynetdicom closes and unlinks it
        self.name, self.file = self._fh.name, self
        self.limit, self.written = limit, 0
        self.problem: str | None = None
        # pynetdicom removes the file after the C-STORE handler, never when the association ends mid-dataset:
        # its association removes what is left when it ends (cut transfers filled the spool, finding 7)
        assoc = association_of(threading.current_thread())
        if assoc is not None:
            connection(assoc).arriving.append(Path(self.name))

    def _give_up(self, problem: str) -> None:
        self.problem = problem
        with contextlib.suppress(OSError):
            os.ftruncate(self._fh.fileno(), 0)

    def write(self, data: bytes) -> int:
        if self.problem is None and self.written + len(data) > self.limit:
            self._give_up(f"instance larger than max_instance_mb ({self.limit / 2**20:g} MB)")
        if self.problem is None:
            try:
                self._fh.write(data)
            except OSError as exc:
                self._give_up(f"spool full while receiving ({exc.strerror})")
        self.written += len(data)
        return len(data)

    def flush(self) -> None:
        if self.problem is None:
            try:
                self._fh.flush()
            except OSError as exc:
                self._give_up(f"spool full while receiving ({exc.strerror})")

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a buffer that could not be written is dropped
            self._fh.close()

    def __getattr__(self, name: str):
        return getattr(self._fh, name)


def arriving_files(folder: Path, limit: int):
    return partial(ArrivingFile, folder, limit)


# --- handlers: one job each -------------------------------------------------------------------
def handle_echo(event: evt.Event) -> int:
    return SUCCESS


def _refuse(spool: Spool, queue: JobQueue, received: Path | None, caller: str, refusal: Refusal, what: str) -> int:
    kept = spool.quarantine(received, f"from {caller}: {refusal.reason}") if received else None
    counter = "instances_conflicting" if refusal.status == CONFLICT else "instances_quarantined"
    logs.event(
        what, logging.WARNING, caller=caller, reason=refusal.reason, file=kept.name if kept else None, kept=bool(kept)
    )
    _count(queue, counter)
    return refusal.status


def _count(queue: JobQueue, name: str) -> None:
    with contextlib.suppress(sqlite3.Error):  # a counter is not worth failing a store for
        queue.count(name)


def handle_store(event: evt.Event, spool: Spool, queue: JobQueue) -> int:
    """Acknowledge an instance only once it is durably on disk and recorded."""
    caller = event.assoc.requestor.ae_title
    received = Path(event.dataset_path)
    arriving = getattr(event.request, "_dataset_file", None)
    if isinstance(arriving, ArrivingFile) and arriving.problem:
        too_large = arriving.problem.startswith("instance larger")
        logs.event(
            "instance_too_large" if too_large else "spool_full", logging.ERROR, caller=caller, error=arriving.problem
        )
        _count(queue, "instances_too_large" if too_large else "instances_refused_full")
        return OUT_OF_RESOURCES
    try:
        inst = inspect(received, event.request)
    except Refusal as refusal:
        return _refuse(spool, queue, received, caller, refusal, "quarantined")
    t0 = time.perf_counter()
    digest = digest_of(received)
    path = spool.instance_path(inst.study, inst.series, inst.sop, digest)
    held_before = path.exists()  # an identical copy already held: never to be removed below
    try:
        if not held_before:
            path = spool.store(received, inst.study, inst.series, inst.sop, digest)
    except (SpoolFull, OSError) as exc:
        logs.event("spool_full", logging.ERROR, caller=caller, error=str(exc))
        return OUT_OF_RESOURCES
    t1 = time.perf_counter()
    try:
        outcome = queue.record_instance(inst.study, inst.series, inst.sop, inst.patient, digest, path, inst.attrs)
    except sqlite3.Error as exc:  # e.g. locked past the busy timeout: the sender may resend
        if not held_before:
            path.unlink(missing_ok=True)
        logs.event("record_failed", logging.ERROR, caller=caller, error=f"{type(exc).__name__}: {exc}")
        return OUT_OF_RESOURCES
    t2 = time.perf_counter()
    if t2 - t0 > SLOW_STORE_S:
        logs.event("store_slow", logging.WARNING, caller=caller, write_s=round(t1 - t0, 2), record_s=round(t2 - t1, 2))
    if outcome.recorded is Recorded.CONFLICT and outcome.held and same_dataset(Path(outcome.held), path):
        if not held_before:
            path.unlink(missing_ok=True)  # the stored copy stays; this one said the same in another encoding
        _count(queue, "instances_duplicate")
        return SUCCESS
    if outcome.recorded is Recorded.CONFLICT:
        source = None if held_before else path
        status = _refuse(spool, queue, source, caller, Refusal(outcome.conflict or "conflict", CONFLICT), "conflict")
        if source is not None:
            source.unlink(missing_ok=True)  # not kept by the quarantine (its quota): it must not stay in incoming/
        return status
    if outcome.recorded in (Recorded.DUPLICATE, Recorded.RESTORED):
        _count(queue, "instances_duplicate")
    elif outcome.recorded is Recorded.LATE:
        _count(queue, "instances_late")
        if outcome.reopened:
            logs.event("study_reopened", logging.WARNING, study=key(inst.study), caller=caller)
    return SUCCESS


def _refusing(exc: OSError) -> OSError:
    """An exception raised on purpose to end a connection (not a defect of ours to log on its own line)."""
    exc.oncoplan_refusal = True  # type: ignore[attr-defined]
    return exc


def bounded_recv(assoc: Association, pdu_timeout_s: float) -> Callable[[int], bytearray]:
    """pynetdicom's AssociationSocket.recv with a size limit (refused before a byte of the PDU is read)
    and a deadline for the whole PDU, not only for each read."""
    conn, sock = connection(assoc), assoc.dul.socket

    def recv(nr_bytes: int) -> bytearray:
        limit = MAX_DATA_PDU_BYTES if conn.accepted else MAX_ASSOCIATION_PDU_BYTES
        if nr_bytes > limit:
            conn.detail = conn.detail or f"a PDU of {nr_bytes} bytes, over the {limit}-byte limit"
            raise _refusing(OSError(conn.detail))
        raw = sock.socket
        deadline = time.monotonic() + pdu_timeout_s + nr_bytes / MIN_PDU_BYTES_PER_S
        data = bytearray()
        try:
            while len(data) < nr_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    late = f"a PDU of {nr_bytes} bytes not received in time ({len(data)} arrived)"
                    conn.detail = conn.detail or late  # the closing line's detail, whatever pynetdicom says next
                    raise _refusing(TimeoutError(late))
                raw.settimeout(min(left, pdu_timeout_s))
                try:
                    chunk = raw.recv(min(65536, nr_bytes - len(data)))
                except TimeoutError as exc:
                    why = "not received in time" if deadline <= time.monotonic() else "stopped part-way"
                    conn.detail = conn.detail or f"a PDU of {nr_bytes} bytes {why} ({len(data)} arrived)"
                    raise _refusing(exc) from None
                if not chunk:  # the peer closed: what arrived, as pynetdicom's own recv returns it
                    break
                data += chunk
        finally:
            with contextlib.suppress(OSError):
                raw.settimeout(pdu_timeout_s)
        return data

    return recv


def handle_open(event: evt.Event, spool: Spool, queue: JobQueue, timeout_s: float, pdu_timeout_s: float) -> None:
    """Before negotiation: the association's ACSE checks the spool's room first, and a watchdog ends a
    connection that has not become an association in time (a peer that connects and stays silent, or
    sends part of a request, holds a slot only this long)."""
    event.assoc.acse = GuardedACSE(event.assoc, spool)
    event.assoc.dul.socket.recv = bounded_recv(event.assoc, pdu_timeout_s)  # type: ignore[method-assign]
    conn = connection(event.assoc)

    def expire() -> None:
        if not conn.accepted:
            _cut(event.assoc, f"no association within {timeout_s:g} s")

    conn.timer = threading.Timer(timeout_s, expire)
    conn.timer.daemon = True
    conn.timer.start()
    # pynetdicom does not signal EVT_CONN_CLOSE on every abnormal path (a peer gone before the association
    # was set up), so the association's own thread writes the closing line when it ends, if none was.
    assoc, run = event.assoc, event.assoc.run

    def run_then_close() -> None:
        try:
            run()
        finally:
            _closing_line(assoc, queue)
            for path in connection(assoc).arriving:  # no handler runs any more: what is left is a torn transfer
                path.unlink(missing_ok=True)

    assoc.run = run_then_close  # type: ignore[method-assign]


def handle_accepted(event: evt.Event) -> None:
    conn = connection(event.assoc)
    conn.accepted = True
    logs.event("association_accepted", caller=event.assoc.requestor.ae_title, receiver=os.getpid())


def handle_rejected(event: evt.Event, queue: JobQueue) -> None:
    conn = connection(event.assoc)
    conn.ended = "refused"
    reason = getattr(event.assoc.acse, "refused", None) or "refused by negotiation"
    logs.event(
        "association_refused",
        logging.WARNING,
        caller=event.assoc.requestor.ae_title,
        address=conn.address,
        reason=reason,
    )
    _count(queue, "associations_refused")


def handle_released(event: evt.Event) -> None:
    conn = connection(event.assoc)
    conn.ended = conn.ended or "released"


def _closing_line(assoc: Association, queue: JobQueue) -> None:
    """One line for a connection that ended other than by release or refusal, with its reason (once)."""
    conn = connection(assoc)
    if conn.timer is not None:
        conn.timer.cancel()
    if conn.logged or conn.ended in ("released", "refused"):
        return
    conn.logged = True
    reason = conn.ended or (
        "protocol error" if conn.protocol_error else "aborted" if assoc.is_aborted else "connection closed"
    )
    logs.event(
        "association_aborted",
        logging.WARNING,
        caller=assoc.requestor.ae_title if conn.accepted else None,
        address=conn.address,
        reason=reason,
        detail=conn.detail,
        accepted=conn.accepted,
    )
    _count(queue, "associations_aborted")


def handle_close(event: evt.Event, queue: JobQueue) -> None:
    _closing_line(event.assoc, queue)


# --- the server -------------------------------------------------------------------------------
class NoDelayServer(ThreadedAssociationServer):
    """Association server that turns off Nagle on each connection (small PDUs such as the C-STORE-RSP go
    out at once instead of waiting on the peer's delayed ACK, ~40 ms on Linux), with a listen backlog
    for bursts (socketserver's default of 5 made a burst of 20 senders wait on SYN retries)."""

    request_queue_size = 128

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address


class GuardedServer(NoDelayServer):
    """The listener's server, with what a hospital network needs besides: a read timeout on every
    connection (pynetdicom's ARTIM and network timeouts never fire while its reader blocks inside a
    half-sent PDU), the TLS handshake off the accept thread and bounded in time (one silent TLS peer
    blocked every other), and a limit of connections per peer address."""

    def __init__(self, *args, limits: ListenerConfig, queue: JobQueue, **kwargs) -> None:
        self.limits, self.queue = limits, queue
        self._pending: Counter[str] = Counter()
        self._pending_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = super().get_request()
        sock.settimeout(self.limits.pdu_timeout_s)
        if self.ssl_context:  # the handshake runs in the connection's own thread (process_request_thread)
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def verify_request(self, request: socket.socket, client_address: tuple[str, int]) -> bool:
        ip, limit = str(client_address[0]), self.limits.max_associations_per_peer
        with self._pending_lock:
            live = self._pending[ip] + sum(1 for a in self.active_associations if str(a.requestor.address) == ip)
            if live >= limit:
                logs.event("connection_refused", logging.WARNING, address=ip, reason=f"per-peer limit ({limit})")
                _count(self.queue, "associations_refused")
                return False
            self._pending[ip] += 1
        return True

    def process_request_thread(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        ip = str(client_address[0])
        try:
            if isinstance(request, ssl.SSLSocket):
                request.settimeout(self.limits.association_timeout_s)
                try:
                    request.do_handshake()
                except (OSError, ssl.SSLError) as exc:
                    logs.event(
                        "association_aborted",
                        logging.WARNING,
                        address=ip,
                        reason="TLS handshake failed or timed out",
                        detail=f"{type(exc).__name__}: {logs.scrub(str(exc), quoted=True)}"[:200],
                        accepted=False,
                    )
                    _count(self.queue, "associations_aborted")
                    self.shutdown_request(request)
                    return
                request.settimeout(self.limits.pdu_timeout_s)
            super().process_request_thread(request, client_address)
        finally:
            with self._pending_lock:
                self._pending[ip] -= 1


class SharedPortServer(GuardedServer):
    """The same, bound with SO_REUSEPORT: several receiving processes listen on one port and the
    kernel spreads the connections over them."""

    def server_bind(self) -> None:  # pynetdicom's own server_bind ignores socketserver's allow_reuse_port
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def _tls_context(config: ListenerConfig) -> ssl.SSLContext | None:
    if config.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(config.tls.cert, config.tls.key)
    if config.tls.ca:
        ctx.load_verify_locations(config.tls.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def start_scp(config: ListenerConfig, spool: Spool, queue: JobQueue) -> ThreadedAssociationServer:
    """Start the SCP in background threads (one per association). Only allowed calling AEs that call our
    AE title are accepted; every storage SOP class in every transfer syntax pynetdicom knows is accepted
    as sent (compressed ones included: a PACS set to send JPEG Lossless only is served; nothing is
    transcoded)."""
    # Datasets arrive into files on the spool's file system (so storing one is a rename), never whole in
    # memory: pynetdicom's chunked receive, into the spool's receiving/. Both settings are pynetdicom's
    # process-wide ones; this process runs one SCP.
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = arriving_files(spool.receiving, int(config.max_instance_mb * 2**20))
    ae = AE(ae_title=config.ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.require_calling_aet = list(config.allowed_callers)
    ae.require_called_aet = True
    ae.maximum_associations = config.max_associations
    # PDUs of up to 4 MB: a CT slice arrives in one, and a PDU is read whole into memory before it is written.
    ae.maximum_pdu_size = MAX_PDU_BYTES
    ae.network_timeout = 120
    ae.acse_timeout = config.association_timeout_s
    handlers = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, partial(handle_store, spool=spool, queue=queue)),
        (
            evt.EVT_CONN_OPEN,
            partial(
                handle_open,
                spool=spool,
                queue=queue,
                timeout_s=config.association_timeout_s,
                pdu_timeout_s=config.pdu_timeout_s,
            ),
        ),
        (evt.EVT_ACCEPTED, handle_accepted),
        (evt.EVT_REJECTED, partial(handle_rejected, queue=queue)),
        (evt.EVT_RELEASED, handle_released),
        (evt.EVT_CONN_CLOSE, partial(handle_close, queue=queue)),
    ]
    server_class = SharedPortServer if config.receivers > 1 else GuardedServer
    server = ae.make_server(
        (config.host, config.port),
        evt_handlers=handlers,
        ssl_context=_tls_context(config),
        server_class=partial(server_class, limits=config, queue=queue),
    )
    ae._servers.append(server)  # as AE.start_server does, so server.shutdown() finds it
    threading.Thread(target=server.serve_forever, name="scp", daemon=True).start()
    return server
