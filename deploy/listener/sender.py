"""Sends results to their destination by C-STORE; a result counts as delivered only on a
success or warning status from the destination."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, build_context

from .config import Peer


class DeliveryError(RuntimeError):
    pass


def _acknowledged(status) -> bool:
    code = getattr(status, "Status", None)
    return code is not None and (code == 0x0000 or 0xB000 <= code <= 0xBFFF)


def send(peer: Peer, calling_ae: str, files: Iterable[Path], timeout_s: float = 60) -> dict[Path, str | None]:
    """C-STORE each file over one association: {file: None if acknowledged, else the reason}."""
    datasets = {Path(f): dcmread(f) for f in files}
    if not datasets:
        return {}
    contexts = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets.values()}
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in sorted(contexts)][:128]
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "destination unreachable"
        return {f: f"{reason} ({peer.ae_title}@{peer.host}:{peer.port})" for f in datasets}
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out: dict[Path, str | None] = {}
    try:
        for f, ds in datasets.items():
            if not assoc.is_established:
                out[f] = "association lost"
                continue
            status = assoc.send_c_store(ds)
            out[f] = None if _acknowledged(status) else f"status 0x{getattr(status, 'Status', 0xFFFF):04X}"
    finally:
        if assoc.is_established:
            assoc.release()
    return out
