"""The one home of our workaround for a race in pynetdicom's association requestor, and of the check that a
C-STORE response answers the store it is taken for; used by the result sender (sender.py) and by the tests'
own sender (tests/pacs.py).

pynetdicom 3.0.4 (pinned in constraints.txt; pyproject allows >=2.1,<4), association.py `_run_reactor`: the
reactor thread sets `_is_paused = True` before it calls `_reactor_checkpoint.wait()`. `send_c_store` clears
the checkpoint and waits only for `_is_paused`, so it can see the reactor as paused while the reactor is past
the wait and still running. If the C-STORE response arrives in that instant, the reactor takes it off
`dimse.msg_queue` itself and hands it to `_serve_request`, which logs "Received unexpected C-STORE service
message" and drops it; `send_c_store` then waits out its DIMSE timeout and aborts the association (the
results are retried: nothing lost, but delayed; seen in CI with 12 concurrent senders).

The fix: each store goes through `Requestor.send_c_store`, which gives it its own Message ID. A message the
reactor takes goes back on `dimse.msg_queue` (where `send_c_store` reads it) only if it is the C-STORE
response to the store in flight: its Message ID Being Responded To is that store's Message ID. A real
request still goes to pynetdicom's own `_serve_request`; anything else (a late response to an earlier store
that timed out, one the peer was never asked for) is dropped with one log line, as pynetdicom would drop it.

pynetdicom does not match a response to its request (`send_c_store` takes whatever message comes first), so
the answer `send_c_store` read is checked too: one that answers another Message ID fails that store
(WrongResponse) and aborts the association, whose queue may hold the real answer, to be mixed up with the next
store's. Without this, a Success meant for another file would mark this one delivered.

`_serve_request` is private to pynetdicom. If a release drops it or `dimse.msg_queue`/`dimse.get_msg`, this
fails loudly (PynetdicomChanged at import, or at the first association) rather than silently losing the fix:
check then whether that release still has the race (its `_run_reactor`) and adapt or remove this module."""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pynetdicom import __version__ as PYNETDICOM_VERSION
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from . import logs


class PynetdicomChanged(RuntimeError):
    """pynetdicom no longer has a private attribute our workaround for its requestor race relies on."""


class WrongResponse(RuntimeError):
    """The C-STORE response read for a store answers another message: the store is not acknowledged."""


def _changed(what: str) -> PynetdicomChanged:
    return PynetdicomChanged(
        f"pynetdicom {PYNETDICOM_VERSION} has no {what}, which OncoPlan's workaround for the requestor reactor "
        "race (written for pynetdicom 3.0.4) relies on: see oncoplan.deploy.listener.requestor"
    )


def check_pynetdicom(association_class: type = Association) -> None:
    """Raise PynetdicomChanged unless `association_class` (pynetdicom's Association) has `_serve_request`."""
    if not callable(getattr(association_class, "_serve_request", None)):
        raise _changed("Association._serve_request")


def _answers(msg, msg_id: int | None) -> bool:
    """Whether `msg` is the C-STORE response to the request with Message ID `msg_id`."""
    return (
        msg_id is not None
        and isinstance(msg, C_STORE)
        and msg.is_valid_response
        and msg.MessageIDBeingRespondedTo == msg_id
    )


def _responding_to(msg) -> int | None:
    value = getattr(msg, "MessageIDBeingRespondedTo", None)
    return value if isinstance(value, int) else None


def _kind(msg) -> str:
    kind = str(getattr(msg, "msg_type", type(msg).__name__))
    return kind + "-RSP" if getattr(msg, "is_valid_response", False) else kind


class Requestor:
    """Stores over one established requestor association, each with its own Message ID, each acknowledged
    only by the response that answers it (see the module's docstring). Made by hand_responses_back."""

    def __init__(self, assoc) -> None:
        serve = getattr(assoc, "_serve_request", None)
        if not callable(serve):
            raise _changed("Association._serve_request")
        dimse = getattr(assoc, "dimse", None)
        queue = getattr(dimse, "msg_queue", None)
        if not callable(getattr(queue, "put", None)):
            raise _changed("DIMSEServiceProvider.msg_queue")
        read = getattr(dimse, "get_msg", None)
        if not callable(read):
            raise _changed("DIMSEServiceProvider.get_msg")
        self.assoc = assoc
        self.awaited: int | None = None  # the Message ID of the store in flight
        self._last_id = 0
        self._read = None  # the message send_c_store read for the store in flight

        def serve_or_hand_back(msg, context_id: int) -> None:  # the reactor's thread
            if getattr(msg, "is_valid_request", False):
                serve(msg, context_id)
            elif _answers(msg, self.awaited):
                queue.put((context_id, msg))
            else:
                awaited = self.awaited
                logs.event(
                    "dicom_response_dropped",
                    logging.WARNING,
                    message=_kind(msg),
                    responding_to=_responding_to(msg),
                    awaiting=awaited,
                    why="no store in flight" if awaited is None else "it does not answer the store in flight",
                )

        def get_msg(block: bool = False):  # send_c_store reads its answer with block=True; the reactor never blocks
            item = read(block=block)
            if block and self.awaited is not None:
                self._read = item[1]
            return item

        assoc._serve_request = serve_or_hand_back
        dimse.get_msg = get_msg

    def send_c_store(self, dataset: Dataset) -> Dataset:
        """pynetdicom's `send_c_store(dataset)` under the next Message ID: its status Dataset (empty when no
        answer came). Raises WrongResponse, having aborted the association, if the answer it read is not
        the C-STORE response to this store."""
        self._last_id = self._last_id % 0xFFFF + 1
        msg_id, self._read = self._last_id, None
        self.awaited = msg_id
        try:
            status = self.assoc.send_c_store(dataset, msg_id=msg_id)
        finally:
            self.awaited = None
        read, self._read = self._read, None
        if "Status" in status and not _answers(read, msg_id):
            self.assoc.abort()
            raise WrongResponse(  # no quote marks: logs.scrub(quoted=True) blanks what lies between them
                f"the C-STORE response of the destination answers message {_responding_to(read)}, not message "
                f"{msg_id} of this store: not acknowledged (association aborted)"
            )
        return status


def hand_responses_back(assoc) -> Requestor:
    """The Requestor of the established requestor association `assoc`: send every C-STORE on `assoc`
    through its `send_c_store`. Call it before the first store. Raises PynetdicomChanged if `assoc` lacks
    `_serve_request`, `dimse.msg_queue` or `dimse.get_msg`."""
    return Requestor(assoc)


check_pynetdicom()
