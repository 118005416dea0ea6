"""Writers of the CTV app: the mask as an RTSTRUCT (for the TPS) and as a DICOM-SEG (for viewers).

Both say what the contour was conditioned on, where a TPS or viewer shows it: the series
description ("OncoPlan CTV: left BCS N1 (research use only)"), the RTSTRUCT's structure set and ROI
descriptions and the SEG's content and segment descriptions ("interpreted as: left,
breast-conserving surgery, N1"). `ctv_note.json` beside them holds the reader's fields, the Table 5
note the model heard and where the note came from.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydicom.sr.codedict import codes

from oncoplan import __version__
from oncoplan.ctv.note_reader import read_note
from oncoplan.fsio import atomic_path
from oncoplan.operators.file_writer import FileWriterOperator
from oncoplan.rtstruct import ROI, rtstruct_dataset, sorted_order, write_rtstruct
from oncoplan.seg import Algorithm, SegmentSpec, seg_dataset, write_seg

log = logging.getLogger(__name__)
CTV_COLOR = (255, 128, 0)  # the same in the RTSTRUCT and the SEG
CTV_SEGMENT = SegmentSpec("CTV", codes.SCT.Tissue, codes.SCT.ClinicalTargetVolume, CTV_COLOR)
DESCRIPTION = "OncoPlan CTV (research use only)"
SIDECAR = "ctv_note.json"
_SHORT = {"BCS": "BCS", "TM": "mastectomy"}


def reading_of(result: dict) -> dict:
    """The reader's interpretation carried with the mask (or read again from the Table 5 note)."""
    reading = result.get("reading")
    if not reading:
        reading = read_note(result["note"]).to_dict()
    return reading


def compact(reading: dict) -> str:
    """ "left BCS N1"; bilateral "left BCS N0; right mastectomy N1" (fits a 64-character LO)."""
    return "; ".join(f"{s['side']} {_SHORT[s['surgery']]} {s['n_stage']}" for s in reading["sides"])


def interpreted(reading: dict, limit: int | None = None) -> str:
    text = f"interpreted as: {reading['interpretation']}"
    return f"interpreted as: {compact(reading)}" if limit and len(text) > limit else text


def series_description(reading: dict) -> str:
    text = f"OncoPlan CTV: {compact(reading)} (research use only)"
    return text if len(text) <= 64 else DESCRIPTION


class _CTVWriter(FileWriterOperator):
    """Receives the CTV result (``{"volume", "mask", "note", "reading"}``) on port ``mask``."""

    port = "mask"

    def write(self, result: dict) -> list[Path]:
        return self.write_mask(result["volume"], result["mask"], reading_of(result))

    def write_mask(self, volume, mask, reading: dict) -> list[Path]:
        raise NotImplementedError


class CTVRTStructWriterOperator(_CTVWriter):
    """Writes `ctv_rtstruct.dcm` (one CTV ROI, closed planar contours on the CT slices) and `ctv_note.json`."""

    def write_mask(self, volume, mask, reading: dict) -> list[Path]:
        roi = ROI("CTV", mask[sorted_order(volume.datasets)], CTV_COLOR, "CTV", description=interpreted(reading, 64))
        rtstruct = rtstruct_dataset(
            volume.datasets,
            [roi],
            series_description(reading),
            structure_set_description="Automatic contours (research use only; not for clinical use); clinical note "
            f"{interpreted(reading)}",
        )
        sidecar = self.output_folder / SIDECAR
        with atomic_path(sidecar) as tmp:
            Path(tmp).write_text(json.dumps(reading | {"research_use_only": True}, indent=2) + "\n")
        return [write_rtstruct(rtstruct, self.output_folder / "ctv_rtstruct.dcm"), sidecar]


class CTVSegWriterOperator(_CTVWriter):
    """Writes `ctv_seg.dcm`: a binary DICOM-SEG with the CTV as an AUTOMATIC segment."""

    model_name = "OncoPlan LLMSeg"

    def write_mask(self, volume, mask, reading: dict) -> list[Path]:
        algorithm = Algorithm(self.model_name, __version__)
        seg = seg_dataset(
            [mask],
            [CTV_SEGMENT],
            volume.datasets,
            series_description(reading),
            algorithm=algorithm,
            content_description=interpreted(reading, 64),
            segment_descriptions=[interpreted(reading, 64)],
        )
        if seg is None:
            log.warning("empty CTV: no DICOM-SEG written (a SEG cannot have an empty segment)")
            return []
        return [write_seg(seg, self.output_folder / "ctv_seg.dcm")]
