"""Writers of the CTV app: the mask as an RTSTRUCT (for the TPS) and as a DICOM-SEG (for viewers)."""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom.sr.codedict import codes

from oncoplan import __version__
from oncoplan.operators.file_writer import FileWriterOperator
from oncoplan.rtstruct import ROI, rtstruct_dataset, sorted_order, write_rtstruct
from oncoplan.seg import Algorithm, SegmentSpec, seg_dataset, write_seg

log = logging.getLogger(__name__)
CTV_COLOR = (255, 128, 0)  # the same in the RTSTRUCT and the SEG
CTV_SEGMENT = SegmentSpec("CTV", codes.SCT.Tissue, codes.SCT.ClinicalTargetVolume, CTV_COLOR)
DESCRIPTION = "OncoPlan CTV (research use only)"


class _CTVWriter(FileWriterOperator):
    """Receives the CTV result (``{"volume", "mask"}``) on port ``mask``."""

    port = "mask"

    def write(self, result: dict) -> list[Path]:
        return self.write_mask(result["volume"], result["mask"])

    def write_mask(self, volume, mask) -> list[Path]:
        raise NotImplementedError


class CTVRTStructWriterOperator(_CTVWriter):
    """Writes `ctv_rtstruct.dcm`: one CTV ROI, closed planar contours on the CT slices."""

    def write_mask(self, volume, mask) -> list[Path]:
        roi = ROI("CTV", mask[sorted_order(volume.datasets)], CTV_COLOR, "CTV")
        rtstruct = rtstruct_dataset(volume.datasets, [roi], DESCRIPTION)
        return [write_rtstruct(rtstruct, self.output_folder / "ctv_rtstruct.dcm")]


class CTVSegWriterOperator(_CTVWriter):
    """Writes `ctv_seg.dcm`: a binary DICOM-SEG with the CTV as an AUTOMATIC segment."""

    model_name = "OncoPlan LLMSeg"

    def write_mask(self, volume, mask) -> list[Path]:
        algorithm = Algorithm(self.model_name, __version__)
        seg = seg_dataset([mask], [CTV_SEGMENT], volume.datasets, DESCRIPTION, algorithm=algorithm)
        if seg is None:
            log.warning("empty CTV: no DICOM-SEG written (a SEG cannot have an empty segment)")
            return []
        return [write_seg(seg, self.output_folder / "ctv_seg.dcm")]
