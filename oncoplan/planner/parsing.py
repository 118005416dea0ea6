"""Strict parsing of LLM answers into a Protocol, and free-text TACE reports into action keywords.

LLM answers (seed Figures 10-12) must be one JSON object, bare or as the only content of one
Markdown code fence (```json ... ```); prose around it, several objects or anything else that is
not JSON is rejected. Accepted keys:

* ``"keywords"`` (Figures 11, 12): ``"Doxorubicin; LC Beads"``;
* ``"Chemotherapy Drugs"`` and ``"Embolization Materials"`` (Figure 10);
* optionally ``"reason"`` (free text, kept for the report).

The seed's examples wrap the object in the case key (``001: {...}``); an object whose only key
holds such an object is unwrapped once. Values are ``";"``-separated strings (as in the seed) or
lists of strings. Every keyword goes through :func:`oncoplan.tace.actions.canonical`
(``THP`` is Pirarubicin; ``"Pirarubicin (THP)"`` is accepted when both names agree); a keyword
outside the action base or outside the requested action set, a drug listed as an embolic (or the
reverse), unknown keys and an answer without at least one drug and one embolic are rejected
with a one-line reason (:class:`AnswerRejected`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from oncoplan.tace.actions import ACTION_BASE, DRUGS, EMBOLICS, Protocol, canonical

KEYWORDS_KEY = "keywords"
DRUGS_KEY = "Chemotherapy Drugs"
EMBOLICS_KEY = "Embolization Materials"
REASON_KEY = "reason"
_KNOWN_KEYS = {KEYWORDS_KEY, DRUGS_KEY, EMBOLICS_KEY, REASON_KEY}

_FENCE = re.compile(r"\A\s*```[ \t]*(?:json|JSON)?[ \t]*\n(?P<body>.*?)\n?[ \t]*```\s*\Z", re.DOTALL)
_THINK = re.compile(r"\A\s*<think>.*?</think>", re.DOTALL)


class AnswerRejected(ValueError):
    """An LLM answer that is not a valid protocol; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ParsedAnswer:
    protocol: Protocol
    reason: str | None = None
    form: str = KEYWORDS_KEY  # which key form the answer used


def keyword(name: str) -> str:
    """Canonical action-base name of one answer keyword; ValueError outside the base."""
    try:
        return canonical(name)
    except ValueError:
        m = re.fullmatch(r"\s*(.+?)\s*\(\s*(.+?)\s*\)\s*", name)
        if m:
            names = {canonical(m.group(1)), canonical(m.group(2))}  # raises if either is unknown
            if len(names) == 1:
                return names.pop()
        raise


def _json_object(text: str, strip_reasoning: bool) -> dict:
    if strip_reasoning:
        text = _THINK.sub("", text, count=1)
    if not text.strip():
        raise AnswerRejected("empty answer")
    fenced = _FENCE.match(text)
    body = fenced.group("body") if fenced else text
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise AnswerRejected(f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(value, dict):
        raise AnswerRejected(f"not a JSON object (got {type(value).__name__})")
    if len(value) == 1 and not (_KNOWN_KEYS & set(value)):
        (inner,) = value.values()
        if isinstance(inner, dict):
            value = inner  # the seed's "001: {...}" wrapper
    return value


def _terms(value: object, key: str) -> list[str]:
    if isinstance(value, str):
        return [t.strip() for t in re.split(r"[;,]", value) if t.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [t.strip() for v in value for t in re.split(r"[;,]", v) if t.strip()]
    raise AnswerRejected(f"{key!r} must be a string of ';'-separated keywords or a list of strings")


def parse_answer(
    text: str | None, action_set: Iterable[str] = ACTION_BASE, strip_reasoning: bool = False
) -> ParsedAnswer:
    """Validate one LLM answer against `action_set` (default the whole action base).

    `strip_reasoning` drops a leading ``<think>...</think>`` block (DeepSeek-R1 style) first.
    Raises :class:`AnswerRejected` with the reason.
    """
    allowed = {canonical(a) for a in action_set}
    obj = _json_object(text or "", strip_reasoning)
    unknown = sorted(set(obj) - _KNOWN_KEYS)
    if unknown:
        raise AnswerRejected(f"unknown key(s) {', '.join(map(repr, unknown))}")
    reason = obj.get(REASON_KEY)
    if reason is not None and not isinstance(reason, str):
        raise AnswerRejected(f"{REASON_KEY!r} must be a string")
    if KEYWORDS_KEY in obj:
        if DRUGS_KEY in obj or EMBOLICS_KEY in obj:
            raise AnswerRejected(f"give either {KEYWORDS_KEY!r} or {DRUGS_KEY!r}/{EMBOLICS_KEY!r}, not both")
        groups, form = {KEYWORDS_KEY: _terms(obj[KEYWORDS_KEY], KEYWORDS_KEY)}, KEYWORDS_KEY
    elif DRUGS_KEY in obj or EMBOLICS_KEY in obj:
        groups = {k: _terms(obj.get(k, ""), k) for k in (DRUGS_KEY, EMBOLICS_KEY)}
        form = "sets"
    else:
        raise AnswerRejected(f"no {KEYWORDS_KEY!r} and no {DRUGS_KEY!r}/{EMBOLICS_KEY!r} key")
    names: list[str] = []
    for key, terms in groups.items():
        for term in terms:
            try:
                name = keyword(term)
            except ValueError:
                raise AnswerRejected(f"{term!r} is not in the TACE action base") from None
            if name not in allowed:
                raise AnswerRejected(f"{term!r} is not in the requested action set")
            if key == DRUGS_KEY and name not in DRUGS:
                raise AnswerRejected(f"{term!r} is not a chemotherapy drug")
            if key == EMBOLICS_KEY and name not in EMBOLICS:
                raise AnswerRejected(f"{term!r} is not an embolization material")
            names.append(name)
    if not names:
        raise AnswerRejected("no keyword given")
    protocol = Protocol.of(names)
    if not protocol.drugs:
        raise AnswerRejected("no chemotherapy drug given")
    if not protocol.embolics:
        raise AnswerRejected("no embolization material given")
    return ParsedAnswer(protocol, reason, form)


# -- free-text TACE reports (seed Table 5) -------------------------------------------------------

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_MAX_WORDS = 4  # longest alias: "10-hydroxycamptothecin", "gelatin sponge particles", ...


def report_keywords(text: str) -> tuple[str, ...]:
    """Action-base names mentioned in a free-text TACE report, unique, in order of first mention.

    At each word the longest run of up to four words that :func:`canonical` knows wins
    ("ultra-liquid Lipiodol", "Gelatin Sponge particles", "THP"); other words are skipped.
    """
    words = _WORD.findall(text)
    found: list[str] = []
    i = 0
    while i < len(words):
        for j in range(min(len(words), i + _MAX_WORDS), i, -1):
            try:
                name = canonical(" ".join(words[i:j]))
            except ValueError:
                continue
            if name not in found:
                found.append(name)
            i = j
            break
        else:
            i += 1
    return tuple(found)


def parse_report(text: str) -> Protocol:
    """The protocol of a free-text TACE report (drugs then embolics, action-base order)."""
    return Protocol.of(report_keywords(text))


__all__ = [
    "DRUGS_KEY",
    "EMBOLICS_KEY",
    "KEYWORDS_KEY",
    "AnswerRejected",
    "ParsedAnswer",
    "keyword",
    "parse_answer",
    "parse_report",
    "report_keywords",
]
