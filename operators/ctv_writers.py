"""Writers of the CTV app: the mask as an RTSTRUCT (for the TPS) and as a DICOM-SEG (for viewers)."""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec
from pydicom.sr.codedict import codes

from oncoplan import __version__
from oncoplan.rtstruct import ROI, rtstruct_dataset, sorted_order, write_rtstruct
from oncoplan.seg import Algorithm, SegmentSpec, seg_dataset, write_seg

log = logging.getLogger(__name__)
CTV_SEGMENT = SegmentSpec("CTV", codes.SCT.Tissue, codes.SCT.ClinicalTargetVolume)
CTV_COLOR = (255, 128, 0)
DESCRIPTION = "OncoPlan CTV (research use only)"


class _CTVWriter(Operator):
    """Receives the CTV result on port `mask` and writes one file into the output folder."""

    def __init__(self, fragment: Fragment, *args, output_folder: Path, **kwargs) -> None:
        self.output_folder = Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("mask")

    def compute(self, op_input, op_output, context) -> None:
        result = op_input.receive("mask")
        path = self.write(result["volume"], result["mask"])
        if path:
            log.info("wrote %s", path)

    def write(self, volume, mask) -> Path | None:
        raise NotImplementedError


class CTVRTStructWriterOperator(_CTVWriter):
    """Writes `ctv_rtstruct.dcm`: one CTV ROI, closed planar contours on the CT slices."""

    def write(self, volume, mask) -> Path:
        roi = ROI("CTV", mask[sorted_order(volume.datasets)], CTV_COLOR, "CTV")
        rtstruct = rtstruct_dataset(volume.datasets, [roi], DESCRIPTION)
        return write_rtstruct(rtstruct, self.output_folder / "ctv_rtstruct.dcm")


class CTVSegWriterOperator(_CTVWriter):
    """Writes `ctv_seg.dcm`: a binary DICOM-SEG with the CTV as an AUTOMATIC segment."""

    model_name = "OncoPlan LLMSeg"

    def write(self, volume, mask) -> Path | None:
        algorithm = Algorithm(self.model_name, __version__)
        seg = seg_dataset([mask], [CTV_SEGMENT], volume.datasets, DESCRIPTION, algorithm=algorithm)
        if seg is None:
            log.warning("empty CTV: no DICOM-SEG written (a SEG cannot have an empty segment)")
            return None
        return write_seg(seg, self.output_folder / "ctv_seg.dcm")
