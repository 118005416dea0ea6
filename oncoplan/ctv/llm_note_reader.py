"""The CTV note read by a language model (opt-in), held to the rule reader's field rules, else the rules.

`oncoplan contour --note-reader rules|openai|transformers` (ONCOPLAN_NOTE_READER for MAP runs): ``rules`` (the
default) is the offline reader (:mod:`.note_reader`). ``openai`` asks an OpenAI-compatible endpoint through
the TACE policy's client and choice (:func:`oncoplan.planner.policy.chat_completion`,
:class:`~oncoplan.planner.policy.PolicyChoice`: ``--allow-send`` / ONCOPLAN_LLM_ALLOW_SEND=1 to opt in,
``--llm-model``, ``--llm-base-url``, key in OPENAI_API_KEY) with the note de-identified by
:func:`oncoplan.planner.deid.redact_text` (the study's IDs, names, UIDs and dates, as
:func:`~oncoplan.planner.deid.identifiers_of` finds them in its DICOM headers and clinical.json; titled names,
labelled IDs, long numbers, ages over 89), and every request checked by
:func:`~oncoplan.planner.deid.check_outgoing` against the same identifiers before and as it is sent.
``transformers`` asks a local chat model folder (``--llm-model DIR``); nothing leaves the machine.

The model is asked for the fields as JSON (``{"sides": [{"side", "surgery", "n_stage", "t_stage"}]}``, or
``{"refuse": why}``); its answer goes through :func:`.note_reader.reading_from_fields` (the rule reader's
vocabularies and contradictions) and must name only sides the note mentions. One request, no retry: a
timeout, an error, a refusal by the privacy guard, a refusal by the model or an answer that breaks a rule is
a fallback to the rule reader (which may itself refuse the note), logged without the note and recorded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from oncoplan.ctv.note_reader import NoteReading, read_note, reading_from_fields, sides_mentioned
from oncoplan.errors import InputError

log = logging.getLogger(__name__)

READERS = ("rules", "openai", "transformers")
ENV_NOTE_READER = "ONCOPLAN_NOTE_READER"
MAX_NEW_TOKENS = 200
_MAX_REASON = 200

PROMPT = """You read a radiation oncologist's note on a breast cancer patient and extract the fields that define \
the clinical target volume of adjuvant radiotherapy. Answer with one JSON object and nothing else:
{{"sides": [{{"side": "left" or "right", "surgery": "breast-conserving surgery" or "mastectomy", \
"n_stage": "N0", "N1mi", "N1", "N2" or "N3", "t_stage": e.g. "T1c", or null}}]}}
One entry per breast treated now (two for bilateral treatment); none for a side named only as history or for \
prophylactic surgery. Lumpectomy, wide local excision, quadrantectomy, segmentectomy and partial mastectomy are \
breast-conserving surgery; total, simple, modified radical, skin- or nipple-sparing and completion mastectomy are \
mastectomy. Give the N stage without prefix or subgroup (pN1a is N1; micrometastasis only is N1mi; isolated \
tumour cells are N0); with only a node count: 0 positive is N0, 1-3 N1, 4-9 N2, 10 or more N3. If the note does \
not say the side, the surgery or the N stage of a treated side, or contradicts itself (left and right for one \
breast, lumpectomy and mastectomy on one side, two different N stages), answer {{"refuse": "what is missing or \
contradictory"}} instead of guessing.

Note:
<<<
{note}
>>>"""


@dataclass(frozen=True)
class NoteReader:
    """Which reader reads the note: ``rules`` (offline), or an LLM through the TACE policy's choice object."""

    kind: str = "rules"
    choice: Any = None  # oncoplan.planner.policy.PolicyChoice for openai / transformers

    @classmethod
    def resolve(
        cls,
        kind: str | None = None,
        *,
        allow_send: bool | str = False,
        model: str | None = None,
        base_url: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> NoteReader:
        """From the options over the environment (ONCOPLAN_NOTE_READER and the LLM policy's variables); a
        reader that cannot run (openai without --allow-send or a key, a missing model folder) is one line."""
        env = os.environ if env is None else env
        kind = (kind or env.get(ENV_NOTE_READER) or "rules").strip().lower()
        if kind not in READERS:
            raise InputError(f"unknown note reader {kind!r}; choose {', '.join(READERS)}")
        if kind == "rules":
            return cls()
        from oncoplan.planner.policy import PolicyChoice

        send = allow_send is True or str(allow_send).strip().lower() in ("1", "true", "yes")
        choice = PolicyChoice.resolve(
            kind,
            allow_send=send,
            model=model,
            base_url=base_url,
            env=env,
            what="note reader",
            sends="the de-identified clinical note",
        )
        return cls(kind, choice)

    def label(self) -> str:
        return "rules" if self.choice is None else self.choice.label()

    def model_name(self) -> str | None:
        if self.kind == "openai":
            return self.choice.llm.model
        if self.kind == "transformers":
            return os.path.basename(str(self.choice.model_dir).rstrip("/"))
        return None

    def read(self, text: str, where: str, forbidden: Iterable[str] = ()) -> tuple[NoteReading, dict]:
        """(what was understood, what the outputs record of the reader). `forbidden`: the study's identifiers
        (never sent; the request is refused if it holds one). InputError: the rule reader refuses the note."""
        if self.kind == "rules":
            return read_note(text, where), {"reader": "rules"}
        record: dict[str, Any] = {"reader_requested": self.label(), "reader_model": self.model_name()}
        if self.kind == "openai":
            record["reader_base_url"] = self.choice.llm.base_url or "(openai client default)"
            record["sent_deidentified_note"] = True
        try:
            reading = self._ask(text, where, frozenset(forbidden))
        except InputError as exc:
            reason = str(exc)
        except Exception as exc:  # BackendError, PrivacyError, AnswerRejected, a model that does not load
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        else:
            return reading, {"reader": self.kind, **record, "reader_fallback": None}
        reason = reason[:_MAX_REASON]
        log.warning("note reader %s fell back to the rules: %s", self.label(), reason)
        try:
            reading = read_note(text, where)
        except InputError as exc:
            raise InputError(f"{exc} (the {self.label()} note reader fell back to the rules: {reason})") from None
        return reading, {"reader": "rules", **record, "reader_fallback": reason}

    def messages(self, text: str, forbidden: Iterable[str] = ()) -> list[dict[str, Any]]:
        """The chat messages: the note de-identified (oncoplan.planner.deid.redact_text) in the prompt."""
        from oncoplan.planner.deid import redact_text

        return [{"role": "user", "content": PROMPT.format(note=redact_text(str(text), forbidden).strip())}]

    def _ask(self, text: str, where: str, forbidden: frozenset[str]) -> NoteReading:
        from oncoplan.planner.parsing import AnswerRejected, _json_object
        from oncoplan.planner.policy import chat_completion, load_local_chat, local_chat_completion

        messages = self.messages(text, forbidden)
        if self.kind == "openai":
            answer = chat_completion(self.choice.llm, messages, forbidden)
        else:
            model, tokenizer, _ = load_local_chat(self.choice.model_dir)
            answer = local_chat_completion(model, tokenizer, messages, MAX_NEW_TOKENS)
        value = _json_object(answer, True)
        if "refuse" in value:
            raise AnswerRejected(f"the model declined: {' '.join(str(value['refuse']).split())}")
        if set(value) != {"sides"}:
            raise AnswerRejected(f"expected the key 'sides', got {', '.join(sorted(map(str, value))) or 'none'}")
        reading = reading_from_fields(value["sides"], f"the {self.label()} answer")
        named = sides_mentioned(text)
        for side in reading.sides:
            if side.side not in named:
                raise AnswerRejected(f"the answer gives the {side.side} side, which the note does not name")
        return reading
