"""Structured (JSON-lines) logs. Callers pass spool keys and job ids, never UIDs, names or dates of
patients; what libraries say (pydicom's warnings, pynetdicom's errors) is captured into the same
stream as one line each, with UIDs, dates and quoted values blanked, since such messages quote the
data they complain about."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from oncoplan.redact import CurrentStderr, scrub

LOGGER = logging.getLogger("oncoplan.listener")
LIBRARIES = ("pydicom", "pynetdicom", "py.warnings")


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
            "level": record.levelname.lower(),
        }
        if record.name == LOGGER.name:
            entry["event"] = record.getMessage()
            fields = getattr(record, "fields", {})
            entry.update({k: scrub(v) if isinstance(v, str) else v for k, v in fields.items()})
        else:  # a library's message: its first line only (no traceback), values blanked
            message = record.getMessage().strip().splitlines() or [""]
            if record.exc_info and record.exc_info[1] is not None:
                message = [f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}".splitlines()[0]]
            entry.update(
                event="library_message",
                library=record.name,
                thread=record.threadName,
                message=scrub(message[0], quoted=True)[:300],
            )
        return json.dumps(entry, default=str)


# Callables that may take a library's record for themselves (True: it is not logged on its own line); the
# SCP uses this to fold what pynetdicom says inside an association into that association's closing line.
CAPTURES: list[Callable[[logging.LogRecord], bool]] = []


def _not_captured(record: logging.LogRecord) -> bool:
    return record.name == LOGGER.name or not any(capture(record) for capture in CAPTURES)


def setup(level: int = logging.INFO) -> None:
    handler = CurrentStderr()
    handler.setFormatter(JsonLines())
    handler.addFilter(_not_captured)
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level)
    LOGGER.propagate = False
    logging.captureWarnings(True)
    for name in LIBRARIES:
        library = logging.getLogger(name)
        library.handlers[:] = [handler]
        library.setLevel(logging.WARNING)
        library.propagate = False


def event(name: str, level: int = logging.INFO, **fields) -> None:
    LOGGER.log(level, name, extra={"fields": fields})
