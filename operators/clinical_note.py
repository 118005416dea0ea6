"""Where the CTV app's clinical note comes from, in a documented order.

1. the note given to the app (`--note`, or the ONCOPLAN_NOTE variable for `python -m`/MAP runs);
2. `clinical.json` in the input folder or beside it (its `note`, or the tabular fields the
   note builder understands: laterality, surgery, N stage, per-side columns);
3. a text SR in the study (Basic/Enhanced/Comprehensive SR): the first TEXT content item
   that reads as a note.
The first source that has a note wins. The note may be free text ("s/p left lumpectomy, pT1c
pN1a (2/12)", "left breast, BCS, N1"): `oncoplan.ctv.note_reader` reads it into side, surgery and
N stage per side, and the model hears those fields as the Table 5 note it was trained on. A note
the reader cannot settle (no side, two surgeries for one side, two N stages, ...) is an error
naming its source and what is missing; no source at all is an error too (the model must not
guess the laterality). The app checks all this before its graph starts (its `check_options`).

With `--note-reader openai|transformers` (`oncoplan.ctv.llm_note_reader`, opt-in) a language model reads
the note instead, de-identified against the study's own identifiers (`study_identifiers`: the IDs, names,
UIDs and dates of its DICOM headers and clinical.json); its answer is held to the rule reader's field rules,
and anything else falls back to the rules. The reading is made once, before the graph, and handed to it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pydicom
from monai.deploy.core import Fragment, Operator, OperatorSpec

from oncoplan.ctv.llm_note_reader import NoteReader
from oncoplan.ctv.note_reader import NoteReading, read_note, sides_mentioned
from oncoplan.ctv.notes import note_from_row
from oncoplan.errors import InputError

SR_MODALITY = "SR"
log = logging.getLogger(__name__)


def clinical_json(input_dir: Path, what: str) -> tuple[dict, Path] | None:
    """(the object, its path) of ``clinical.json`` in the input folder, else beside it; None if neither
    exists; a file that is not a JSON object is an InputError (`what` it should hold)."""
    for path in (input_dir / "clinical.json", input_dir.parent / "clinical.json"):
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InputError(f"{path}: not readable JSON ({exc})") from None
            if not isinstance(data, dict):
                raise InputError(f"{path}: expected a JSON object with {what}")
            return data, path
    return None


def _clinical_json(input_dir: Path) -> tuple[str, str] | None:
    # a free-text `note` (or `text`) is read by the note reader; tabular fields by the note builder
    found = clinical_json(input_dir, "a 'note' or note fields")
    if found is None:
        return None
    data, path = found
    free = next((data[k] for k in ("note", "Note", "text") if isinstance(data.get(k), str) and data[k].strip()), None)
    if free is not None:
        return free, str(path)
    return note_from_row(data, str(path)), str(path)


def text_items(items) -> Iterator[str]:
    """The TEXT values of an SR content tree, depth first."""
    for item in items or []:
        if item.get("ValueType") == "TEXT" and item.get("TextValue"):
            yield str(item.TextValue)
        yield from text_items(item.get("ContentSequence"))


def study_srs(input_dir: Path) -> Iterator[tuple[pydicom.Dataset, Path]]:
    """The SR objects of the study folder (headers and content, no pixels), in path order; OncoPlan's own
    SRs (a plan written back into the study) are skipped."""
    for path in sorted(p for p in input_dir.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM: other files are the loader's business
            continue
        if ds.get("Modality") == SR_MODALITY and ds.get("Manufacturer") != "OncoPlan":
            yield ds, path


def _text_sr(input_dir: Path, any_side: bool = False) -> tuple[str, str] | None:
    """The first TEXT item the rule reader can read; with `any_side` (an LLM reader), else the first that
    names a side."""
    named = None
    for ds, path in study_srs(input_dir):
        for text in text_items(ds.get("ContentSequence")):
            try:
                read_note(text)
            except InputError:
                if any_side and named is None and sides_mentioned(text):
                    named = (text, str(path))
                continue
            return text, str(path)
    return named


def find_note(input_dir: str | Path, given: str | None = None) -> tuple[str, str]:
    """(the Table 5 note the model hears, where the note came from); InputError when there is none
    or the reader cannot settle it."""
    reading, where = read_study_note(input_dir, given)
    return reading.note, where


def read_study_note(input_dir: str | Path, given: str | None = None) -> tuple[NoteReading, str]:
    """(what the reader understood, where the note came from); InputError as `find_note`."""
    reading, where, _ = read_study_note_with(input_dir, given)
    return reading, where


def read_study_note_with(
    input_dir: str | Path, given: str | None = None, reader: NoteReader | None = None
) -> tuple[NoteReading, str, dict]:
    """(what `reader` understood, where the note came from, what the outputs record of the reader);
    InputError as `find_note`. An LLM reader gets the study's identifiers to remove and to refuse."""
    input_dir = Path(input_dir)
    reader = reader or NoteReader()
    if given and given.strip():
        found = (given.strip(), "the --note argument")
    else:
        found = _clinical_json(input_dir) or _text_sr(input_dir, any_side=reader.kind != "rules")
    if found is None:
        raise InputError(
            f"{input_dir}: no clinical note (give --note, put clinical.json beside the study, or include a text SR)"
        )
    note, where = found
    forbidden = study_identifiers(input_dir) if reader.kind != "rules" else frozenset()
    reading, record = reader.read(note, where, forbidden)  # what cannot be settled is refused, not guessed
    return reading, where, record


def study_identifiers(input_dir: str | Path) -> frozenset[str]:
    """The identifying values of the study (oncoplan.planner.deid.identifiers_of): IDs, names, UIDs and dates
    of every DICOM header in the input folder, and the ID/name fields of clinical.json."""
    from oncoplan.planner.deid import identifiers_of

    input_dir = Path(input_dir)
    headers = []
    for path in sorted(p for p in input_dir.rglob("*") if p.is_file()):
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception:  # not DICOM
            continue
    try:
        found = clinical_json(input_dir, "a 'note' or note fields")
    except InputError:
        found = None
    return identifiers_of(found[0] if found else None, headers)


class ClinicalNoteOperator(Operator):
    """Emits {"note": the Table 5 note, "reading": what the reader understood} (module doc: the sources)."""

    def __init__(
        self,
        fragment: Fragment,
        *args,
        input_folder: Path,
        note: str | None = None,
        reader: NoteReader | None = None,
        reading: dict | None = None,
        **kwargs,
    ) -> None:
        self.input_folder = Path(input_folder)
        self.note = note
        self.reader = reader
        self.reading = reading  # made before the graph (the app's check_options): the model is not asked twice
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("note")

    def compute(self, op_input, op_output, context) -> None:
        emitted = self.reading or study_note_record(self.input_folder, self.note, self.reader)
        reading = emitted["reading"]
        by = "" if reading.get("reader", "rules") == "rules" else f" (read by {reading.get('reader_requested')})"
        log.info("clinical note from %s, interpreted as: %s%s", emitted["source"], emitted["interpretation"], by)
        op_output.emit(emitted, "note")


def study_note_record(input_dir: str | Path, given: str | None = None, reader: NoteReader | None = None) -> dict:
    """What the note operator emits: {"note": the Table 5 note, "reading": the fields, the source and the
    reader}, and "source", "interpretation" for its log line; InputError as `find_note`."""
    reading, where, record = read_study_note_with(input_dir, given, reader)
    full = reading.to_dict() | {"source": _source_kind(where)} | record
    return {"note": reading.note, "reading": full, "source": full["source"], "interpretation": reading.interpretation}


def _source_kind(where: str) -> str:
    """Where the note came from, without the path (a folder name may identify the patient)."""
    if where.endswith("clinical.json"):
        return "clinical.json"
    return where if where.startswith("the ") else "a text SR in the study"
