"""Log lines without identifiers: what the listener's JSON lines and the apps' console apply to every line
(ours and the libraries', e.g. highdicom naming the dataset it copies from by its UID); and the stream
both write to.

Outbound text for an LLM service has its own, stricter de-identification (oncoplan/planner/deid.py).
"""

from __future__ import annotations

import logging
import re
import sys

# A UID of five or more components (an IPv4 address has four), or any digits-and-dots run longer than
# an IPv4 address; the DICOM standard's own UIDs (SOP classes, transfer syntaxes) are kept.
_UID = re.compile(r"(?<![\w.])(?!1\.2\.840\.10008\.)(?:\d+(?:\.\d+){4,}|\d[\d.]{15,})(?![\w.])")
_DATE = re.compile(r"(?<!\d)(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?!\d)")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def scrub(text: str, quoted: bool = False) -> str:
    """`text` without UIDs and dates (and, with `quoted`, without quoted values)."""
    text = _DATE.sub("<date>", _UID.sub("<uid>", text))
    return _QUOTED.sub("<value>", text) if quoted else text


def scrub_every_record() -> None:
    """Every log record this process makes, whichever library and handler, is created without UIDs and
    dates (a record factory: handlers that a library's logging configuration replaces keep no filter)."""
    make = logging.getLogRecordFactory()
    if getattr(make, "scrubs", False):
        return

    def scrubbed(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a library's malformed format: logging reports it when it formats the record
            return record
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    scrubbed.scrubs = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(scrubbed)


class CurrentStderr(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a line is written, not to the stream of the moment
    it was made: a library logger's handler outlived the (pytest-captured, later closed) stderr it was made
    with and wrote "--- Logging error ---" tracebacks into a later test's output."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ and setStream assign it
        pass
