"""The Storage SCP: pynetdicom handlers with one job each, and the server that runs them."""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import ssl
import threading
import time
from functools import partial

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.acse import ACSE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from . import logs
from .config import ListenerConfig
from .queue import SERIES_KEYS, JobQueue
from .spool import Spool, SpoolFull, key

SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC210
# A C-STORE whose durable write and record take longer than this is logged with where the time went:
# senders give up after their DIMSE timeout (pynetdicom's 30 s), so a stall should explain itself first.
SLOW_STORE_S = 5.0
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


class NoDelayServer(ThreadedAssociationServer):
    """Association server that turns off Nagle on each connection: small PDUs (C-STORE-RSP)
    go out at once instead of waiting on the peer's delayed ACK (~40 ms on Linux)."""

    def get_request(self):
        sock, address = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address


class SharedPortServer(NoDelayServer):
    """The same, bound with SO_REUSEPORT: several receiving processes listen on one port and the
    kernel spreads the connections over them."""

    def server_bind(self) -> None:  # pynetdicom's own server_bind ignores socketserver's allow_reuse_port
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class ReserveACSE(ACSE):
    """pynetdicom's ACSE that refuses the association itself (A-ASSOCIATE-RJ: rejected-transient,
    local limit exceeded) while the spool has no room for another instance. It overrides
    pynetdicom's private `_negotiate_as_acceptor` (pinned in constraints.txt; tested)."""

    def __init__(self, assoc, spool: Spool) -> None:
        super().__init__(assoc)
        self.spool = spool

    def _negotiate_as_acceptor(self) -> None:
        if self.spool.has_room(self.spool.largest):
            return super()._negotiate_as_acceptor()
        self.requestor.ae_title = self.requestor.primitive.calling_ae_title
        logs.event("association_refused", logging.ERROR, caller=self.requestor.ae_title, reason="spool full")
        self.send_reject(0x02, 0x03, 0x02)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()
        return None


def problem(ds: Dataset) -> str | None:
    """Why an instance cannot go into the spool, or None: the UIDs that place it, and pixel data
    as long as its own header says (a truncated dataset is refused, not stored torn)."""
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not str(ds.get(keyword, "") or "").strip():
            return f"missing {keyword}"
    if "PixelData" in ds and str(getattr(ds.file_meta, "TransferSyntaxUID", "")) in UNCOMPRESSED:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        need = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames * int(ds.BitsAllocated) // 8
        if len(ds.PixelData) < need:
            return f"pixel data truncated ({len(ds.PixelData)} of {need} bytes)"
    return None


def handle_echo(event: evt.Event) -> int:
    return SUCCESS


def handle_store(event: evt.Event, spool: Spool, queue: JobQueue) -> int:
    """Acknowledge an instance only once it is durably on disk and recorded."""
    raw = event.encoded_dataset(include_meta=True)
    caller = event.assoc.requestor.ae_title
    try:
        ds = event.dataset
        ds.file_meta = event.file_meta
        reason = problem(ds)
    except Exception as exc:  # anything pydicom cannot parse is the sender's problem, not ours
        reason = f"cannot decode the dataset ({type(exc).__name__}: {exc})"
    try:
        if reason:
            where = spool.quarantine(raw, f"from {caller}: {reason}")
            logs.event("quarantined", logging.WARNING, caller=caller, reason=reason, file=where.name)
            return CANNOT_UNDERSTAND
        t0 = time.perf_counter()
        path = spool.store(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, raw)
    except (SpoolFull, OSError) as exc:
        logs.event("spool_full", logging.ERROR, caller=caller, error=str(exc))
        return OUT_OF_RESOURCES
    attrs = {k: str(ds.get(k, "") or "") for k in SERIES_KEYS}
    t1 = time.perf_counter()
    try:
        recorded = queue.record_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, path, attrs)
    except sqlite3.Error as exc:  # e.g. locked past the busy timeout: the sender may resend; the file is kept
        logs.event("record_failed", logging.ERROR, caller=caller, error=f"{type(exc).__name__}: {exc}")
        return OUT_OF_RESOURCES
    if not recorded:
        logs.event("late_instance", logging.WARNING, study=key(ds.StudyInstanceUID), caller=caller)
    t2 = time.perf_counter()
    if t2 - t0 > SLOW_STORE_S:
        logs.event("store_slow", logging.WARNING, caller=caller, write_s=round(t1 - t0, 2), record_s=round(t2 - t1, 2))
    return SUCCESS


def handle_open(event: evt.Event, spool: Spool) -> None:
    """Before negotiation: the association's ACSE checks the spool's room first."""
    event.assoc.acse = ReserveACSE(event.assoc, spool)


def handle_accepted(event: evt.Event) -> None:
    logs.event("association_accepted", caller=event.assoc.requestor.ae_title, receiver=os.getpid())


def handle_rejected(event: evt.Event) -> None:
    logs.event(
        "association_rejected",
        logging.WARNING,
        caller=event.assoc.requestor.ae_title,
        address=event.assoc.requestor.address,
    )


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
    """Start the SCP in background threads (one per association); unknown calling AEs are rejected."""
    ae = AE(ae_title=config.ae_title)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.require_calling_aet = list(config.allowed_callers)
    ae.maximum_associations = 64
    ae.maximum_pdu_size = 0  # no limit: a dataset arrives in a few large PDUs, not hundreds of 16 KB ones
    ae.network_timeout = 120
    handlers = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, partial(handle_store, spool=spool, queue=queue)),
        (evt.EVT_ACCEPTED, handle_accepted),
        (evt.EVT_REJECTED, handle_rejected),
        (evt.EVT_CONN_OPEN, partial(handle_open, spool=spool)),
    ]
    server_class = SharedPortServer if config.receivers > 1 else NoDelayServer
    server = ae.make_server(
        (config.host, config.port), evt_handlers=handlers, ssl_context=_tls_context(config), server_class=server_class
    )
    ae._servers.append(server)  # as AE.start_server does, so server.shutdown() finds it
    threading.Thread(target=server.serve_forever, name="scp", daemon=True).start()
    return server
