"""Sends results to their destination by C-STORE; a result counts as delivered only on a success or
warning status from the destination. Each file's outcome is its own: one that cannot be read, has an
invalid UID or is refused fails alone, never the files batched with it."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context

from . import logs
from .config import Peer
from .requestor import hand_responses_back
from .scp import association_of, valid_uid

# What pynetdicom says inside one of our deliveries (a refused connection is two ERROR lines from its DUL
# thread) is kept on the AE of that delivery and becomes part of the delivery's own result_not_sent line.
SAID = "oncoplan_said"


def capture_delivery_log(record: logging.LogRecord) -> bool:
    if not record.name.startswith("pynetdicom"):
        return False
    assoc = association_of(threading.current_thread())
    said = getattr(getattr(assoc, "ae", None), SAID, None) if assoc is not None and assoc.is_requestor else None
    if said is None:
        return False
    if record.levelno >= logging.WARNING:
        said.append(logs.scrub((record.getMessage().strip().splitlines() or [""])[0], quoted=True)[:200])
    return True


logs.CAPTURES.append(capture_delivery_log)


@dataclass(frozen=True)
class Failure:
    reason: str
    final: bool = False  # it can never be sent as it is (unreadable, invalid UIDs): not retried


def _acknowledged(status) -> bool:
    code = getattr(status, "Status", None)
    return code is not None and (code == 0x0000 or 0xB000 <= code <= 0xBFFF)


def _context(ds: Dataset) -> tuple[str, str]:
    return str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)


def _refused(assoc, proposed: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """{(SOP class, transfer syntax): why} of the `proposed` contexts the destination did not accept in the
    negotiation (matched by what it accepted: what a peer puts in a rejected context's transfer syntax is
    not significant, PS3.8 9.3.3.2)."""
    accepted = {(str(cx.abstract_syntax), str(ts)) for cx in assoc.accepted_contexts for ts in cx.transfer_syntax}
    why = {str(cx.abstract_syntax): cx.status for cx in assoc.rejected_contexts}
    return {c: why.get(c[0], "rejected") for c in proposed if c not in accepted}


def _never_accepted(peer: Peer, why: str) -> Failure:
    """A result whose SOP class and transfer syntax the destination refused in the association negotiation
    (`why`: the result it gave): it will never take it as it is, so it is not retried (a destination that
    is merely down is)."""
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    return Failure(f"the destination refused the result's presentation context: {why.lower()} ({where})", True)


def _load(path: Path) -> Dataset | Failure:
    try:
        ds = dcmread(path)
    except Exception as exc:
        return Failure(f"cannot read the result ({type(exc).__name__})", final=True)
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not valid_uid(str(ds.get(keyword, "") or "")):
            return Failure(f"the result's {keyword} is not a valid UID", final=True)
    return ds


def send(peer: Peer, calling_ae: str, files: Iterable[Path], timeout_s: float = 60) -> dict[Path, Failure | None]:
    """C-STORE each file over one association: {file: None if acknowledged, else the Failure}."""
    loaded = {Path(f): _load(Path(f)) for f in files}
    out: dict[Path, Failure | None] = {f: ds for f, ds in loaded.items() if isinstance(ds, Failure)}
    datasets = {f: ds for f, ds in loaded.items() if isinstance(ds, Dataset)}
    if not datasets:
        return out
    contexts = {_context(ds) for ds in datasets.values()}
    ae = AE(ae_title=calling_ae)
    said: list[str] = []
    setattr(ae, SAID, said)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    proposed = sorted(contexts)[:128]
    ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in proposed]
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        # Negotiated, but none of the proposed contexts accepted (pynetdicom then aborts): each result
        # whose context was refused fails for good; one not proposed (past 128 contexts) waits.
        refused = _refused(assoc, proposed) if assoc.is_aborted and assoc.rejected_contexts else {}
        reason = "association rejected" if assoc.is_rejected else "destination unreachable"
        detail = f": {said[-1]}" if said else ""  # e.g. "TCP Initialisation Error: [Errno 111] Connection refused"
        unsent = Failure(f"{reason} ({peer.ae_title}@{peer.host}:{peer.port}){detail}")
        return out | {
            f: _never_accepted(peer, refused[_context(ds)]) if _context(ds) in refused else unsent
            for f, ds in datasets.items()
        }
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        # Each store under its own Message ID, acknowledged only by the response that answers it (pynetdicom
        # matches none: a late or unrequested Success would mark another file delivered) and safe from
        # pynetdicom's requestor reactor race: see requestor.py.
        requestor = hand_responses_back(assoc)
        for f, ds in datasets.items():
            if not assoc.is_established:
                out[f] = Failure("association lost")
                continue
            try:
                status = requestor.send_c_store(ds)
            except Exception as exc:  # e.g. no accepted presentation context for it, or WrongResponse: this file only
                refused = _refused(assoc, proposed)
                if isinstance(exc, ValueError) and _context(ds) in refused:  # others' contexts were accepted
                    out[f] = _never_accepted(peer, refused[_context(ds)])
                else:
                    out[f] = Failure(f"{type(exc).__name__}: {logs.scrub(str(exc), quoted=True)}"[:500])
                continue
            ok = _acknowledged(status)
            out[f] = None if ok else Failure(f"status 0x{getattr(status, 'Status', 0xFFFF):04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return out
