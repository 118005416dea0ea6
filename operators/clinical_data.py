"""Where the TACE app's clinical data comes from, in a documented order (the first source found wins,
whole; sources are not merged):

1. the file given to the app: ``--clinical FILE`` (``oncoplan plan``, ``python -m``), else the
   ``ONCOPLAN_CLINICAL`` variable (MAP runs): a path to a JSON file, or the JSON object itself;
2. ``clinical.json`` in the input folder, else beside it (the CTV app's file: its ``note`` and other
   keys that name no field are ignored and listed in plan.json);
3. an SR in the study (OncoPlan's own SRs skipped): NUM items whose concept is a schema field (by name
   or LOINC code, ``oncoplan.tace.patient.LOINC``: bilirubin, albumin, INR, AFP, creatinine, clearance,
   eGFR; units from the item),
   else TEXT items written ``name: value`` (``Child-Pugh: B; bilirubin: 2.4 mg/dL``);
4. none: every covariate the models read takes the training median, and the outputs say so.

The schema, units and validation are :mod:`oncoplan.tace.patient`; a bad value is one line naming the
source and the field (exit 2, checked before the graph starts: nothing written).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.deploy.core import Fragment, Operator, OperatorSpec

from oncoplan.errors import InputError, json_object
from oncoplan.operators.clinical_note import clinical_json, study_srs, text_items
from oncoplan.planner.deid import IDENTIFIER_COLUMNS
from oncoplan.tace.patient import LOINC, ClinicalData, Flag, field_named, flags, read_text

CLINICAL_ENV = "ONCOPLAN_CLINICAL"
log = logging.getLogger(__name__)


@dataclass
class ClinicalReading:
    """The study's clinical data, where it came from (no path: a folder name may identify the patient),
    the keys that named no field, the guideline flags, and identifiers the source held (kept only so the
    LLM guard can refuse them; never written)."""

    data: ClinicalData
    source: str
    ignored: list[str] = field(default_factory=list)
    identifiers: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def flags(self) -> list[Flag]:
        return flags(self.data)


def _from_object(data: dict, where: str, source: str) -> ClinicalReading:
    values, ignored = ClinicalData.from_mapping(data, where)
    ids = {k: data[k] for k in IDENTIFIER_COLUMNS if k in data}
    return ClinicalReading(values, source, sorted(ignored), ids)


def _from_file(path: Path, source: str) -> ClinicalReading:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: clinical data file not found") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object of clinical fields")
    return _from_object(data, str(path), source)


def _num_items(items) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in items or []:
        if item.get("ValueType") == "NUM" and item.get("MeasuredValueSequence"):
            concept = item.ConceptNameCodeSequence[0]
            name = LOINC.get(str(concept.CodeValue)) or field_named(str(concept.get("CodeMeaning", "")))
            measured = item.MeasuredValueSequence[0]
            if name is not None:
                unit = (
                    measured.MeasurementUnitsCodeSequence[0].CodeValue
                    if "MeasurementUnitsCodeSequence" in measured
                    else ""
                )
                found[name] = f"{measured.NumericValue} {'' if unit in ('1', '{INR}') else unit}".strip()
        found |= _num_items(item.get("ContentSequence"))
    return found


def _from_sr(input_dir: Path) -> ClinicalReading | None:
    for ds, path in study_srs(input_dir):
        content = ds.get("ContentSequence")
        numbers = _num_items(content)
        if numbers:
            values, _ = ClinicalData.from_mapping(numbers, str(path))
            return ClinicalReading(values, "a structured SR in the study")
        for text in text_items(content):
            read = read_text(text, str(path))
            if read is not None:
                return ClinicalReading(read[0], "a text SR in the study", sorted(read[1]))
    return None


def read_clinical(input_dir: str | Path, given: str | Path | None = None) -> ClinicalReading:
    """The study's clinical data by the module's order; an empty reading (source "none") if none."""
    input_dir = Path(input_dir)
    if given:
        return _from_file(Path(given), "the --clinical file")
    env = os.environ.get(CLINICAL_ENV, "").strip()
    if env.startswith("{"):
        not_json, not_an_object = (
            f"${CLINICAL_ENV}: not a JSON object",
            f"${CLINICAL_ENV}: expected a JSON object of clinical fields",
        )
        data = json_object(env, not_json, not_an_object)
        return _from_object(data, f"${CLINICAL_ENV}", f"${CLINICAL_ENV}")
    if env:
        return _from_file(Path(env), f"${CLINICAL_ENV}")
    found = clinical_json(input_dir, "clinical fields")
    if found is not None:
        data, path = found
        return _from_object(data, str(path), "clinical.json")
    return _from_sr(input_dir) or ClinicalReading(ClinicalData(), "none")


class ClinicalDataOperator(Operator):
    """Emits the study's :class:`ClinicalReading` on port ``clinical`` (module doc: the sources)."""

    def __init__(self, fragment: Fragment, *args, input_folder: Path, clinical: str | None = None, **kwargs) -> None:
        self.input_folder = Path(input_folder)
        self.clinical = clinical
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("clinical")

    def compute(self, op_input, op_output, context) -> None:
        reading = read_clinical(self.input_folder, self.clinical)
        given = sorted(reading.data.given())
        log.info("clinical data from %s: fields %s", reading.source, ", ".join(given) or "none")
        for f in reading.flags:
            log.warning("TACE %s: %s", f.level, f.code)  # the code only: no patient value in a log line
        op_output.emit(reading, "clinical")
