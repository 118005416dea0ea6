"""Structured (JSON-lines) logs. Callers pass spool keys and job ids, never UIDs, names or dates of patients."""

from __future__ import annotations

import json
import logging
import sys
import time

LOGGER = logging.getLogger("oncoplan.listener")


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, default=str)


def setup(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level)
    LOGGER.propagate = False


def event(name: str, level: int = logging.INFO, **fields) -> None:
    LOGGER.log(level, name, extra={"fields": fields})
