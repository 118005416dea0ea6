"""A pynetdicom Storage SCP that stores nothing: the ceiling of any receiver built on pynetdicom,
set up as the listener's SCP is (Nagle off, no PDU size limit), for the ingest benchmark.

    python -m tests.bench.null_scp PORT
"""

from __future__ import annotations

import sys

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from oncoplan.deploy.listener.scp import NoDelayServer


def main(argv: list[str] | None = None) -> int:
    (port,) = argv if argv is not None else sys.argv[1:]
    ae = AE(ae_title="NULLSCP")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.maximum_associations = 64
    ae.maximum_pdu_size = 0
    handlers = [(evt.EVT_C_STORE, lambda event: 0x0000), (evt.EVT_C_ECHO, lambda event: 0x0000)]
    ae.make_server(("127.0.0.1", int(port)), evt_handlers=handlers, server_class=NoDelayServer).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
