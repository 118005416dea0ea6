"""The one exception type that means "the user's input is wrong": the CLI prints it as one line."""

from __future__ import annotations

import json
from typing import Any


class InputError(Exception):
    """Bad input named by the message; the command exits non-zero and writes nothing."""


def json_object(text: str, not_json: str, not_an_object: str) -> dict[str, Any]:
    """`text` parsed as a JSON object, else an :class:`InputError` saying why in one line: `not_json`
    followed by the parser's reason in brackets, or `not_an_object` when it is JSON of another kind."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{not_json} ({exc})") from None
    if not isinstance(value, dict):
        raise InputError(not_an_object)
    return value
