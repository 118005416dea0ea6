"""Where the CTV app's clinical note comes from, in a documented order.

1. the note given to the app (`--note`, or the ONCOPLAN_NOTE variable for `python -m`/MAP runs);
2. `clinical.json` in the input folder or beside it (its `note`, or the tabular fields the
   note builder understands: laterality, surgery, N stage, per-side columns);
3. a text SR in the study (Basic/Enhanced/Comprehensive SR): the first TEXT content item
   that reads as a note.
The first source that has a note wins; a note that does not parse is an error naming its
source, and no source at all is an error too (the model must not guess the laterality).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pydicom
from monai.deploy.core import Fragment, Operator, OperatorSpec

from oncoplan.ctv.notes import note_from_row, parse_note
from oncoplan.errors import InputError

SR_MODALITY = "SR"
log = logging.getLogger(__name__)


def _clinical_json(input_dir: Path) -> tuple[str, str] | None:
    for path in (input_dir / "clinical.json", input_dir.parent / "clinical.json"):
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(f"{path}: not readable JSON ({exc})") from None
            if not isinstance(data, dict):
                raise InputError(f"{path}: expected a JSON object with a 'note' or note fields")
            return note_from_row(data, str(path)), str(path)
    return None


def _text_items(items) -> Iterator[str]:
    for item in items or []:
        if item.get("ValueType") == "TEXT" and item.get("TextValue"):
            yield str(item.TextValue)
        yield from _text_items(item.get("ContentSequence"))


def _text_sr(input_dir: Path) -> tuple[str, str] | None:
    for path in sorted(p for p in input_dir.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM: other files are the loader's business
            continue
        if ds.get("Modality") != SR_MODALITY:
            continue
        for text in _text_items(ds.get("ContentSequence")):
            try:
                parse_note(text)
            except InputError:
                continue
            return text, str(path)
    return None


def find_note(input_dir: str | Path, given: str | None = None) -> tuple[str, str]:
    """(note, where it came from); raises InputError when there is none or it does not parse."""
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
    parse_note(note, where)  # a note the model was not trained on the form of is refused, not guessed
    return note, where


class ClinicalNoteOperator(Operator):
    """Emits the study's clinical note (see the module doc for the order of sources)."""

    def __init__(self, fragment: Fragment, *args, input_folder: Path, note: str | None = None, **kwargs) -> None:
        self.input_folder = Path(input_folder)
        self.note = note
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("note")

    def compute(self, op_input, op_output, context) -> None:
        note, where = find_note(self.input_folder, self.note)
        log.info("clinical note from %s", where)
        op_output.emit(note, "note")
