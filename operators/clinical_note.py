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
guess the laterality). The app checks all this before its graph starts (`check_note`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pydicom
from monai.deploy.core import Fragment, Operator, OperatorSpec

from oncoplan.ctv.note_reader import NoteReading, read_note
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


def _text_sr(input_dir: Path) -> tuple[str, str] | None:
    for ds, path in study_srs(input_dir):
        for text in text_items(ds.get("ContentSequence")):
            try:
                read_note(text)
            except InputError:
                continue
            return text, str(path)
    return None


def find_note(input_dir: str | Path, given: str | None = None) -> tuple[str, str]:
    """(the Table 5 note the model hears, where the note came from); InputError when there is none
    or the reader cannot settle it."""
    reading, where = read_study_note(input_dir, given)
    return reading.note, where


def read_study_note(input_dir: str | Path, given: str | None = None) -> tuple[NoteReading, str]:
    """(what the reader understood, where the note came from); InputError as `find_note`."""
    input_dir = Path(input_dir)
    if given and given.strip():
        found = (given.strip(), "the --note argument")
    else:
        found = _clinical_json(input_dir) or _text_sr(input_dir)
    if found is None:
        raise InputError(
            f"{input_dir}: no clinical note (give --note, put clinical.json beside the study, or include a text SR)"
        )
    note, where = found
    return read_note(note, where), where  # what the reader cannot settle is refused, not guessed


class ClinicalNoteOperator(Operator):
    """Emits {"note": the Table 5 note, "reading": what the reader understood} (module doc: the sources)."""

    def __init__(self, fragment: Fragment, *args, input_folder: Path, note: str | None = None, **kwargs) -> None:
        self.input_folder = Path(input_folder)
        self.note = note
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("note")

    def compute(self, op_input, op_output, context) -> None:
        reading, where = read_study_note(self.input_folder, self.note)
        log.info("clinical note from %s, interpreted as: %s", _source_kind(where), reading.interpretation)
        op_output.emit({"note": reading.note, "reading": reading.to_dict() | {"source": _source_kind(where)}}, "note")


def _source_kind(where: str) -> str:
    """Where the note came from, without the path (a folder name may identify the patient)."""
    if where.endswith("clinical.json"):
        return "clinical.json"
    return where if where.startswith("the ") else "a text SR in the study"
