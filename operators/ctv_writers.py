"""Writers of the CTV app: the mask as an RTSTRUCT (for the TPS) and as a DICOM-SEG (for viewers)."""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec
from pydicom.sr.codedict import codes

from oncoplan import __version__
from oncoplan.rtstruct import ROI, rtstruct_dataset, sort_slices, write_rtstruct
from oncoplan.seg import Algorithm, SegmentSpec, seg_dataset, write_seg

log = logging.getLogger(__name__)
CTV_SEGMENT = SegmentSpec("CTV", codes.SCT.Tissue, codes.SCT.ClinicalTargetVolume)
CTV_COLOR = (255, 128, 0)
DESCRIPTION = "OncoPlan CTV (research use only)"


class CTVRTStructWriterOperator(Operator):
    """Writes `ctv_rtstruct.dcm`: one CTV ROI, closed planar contours on the CT slices."""

    def __init__(self, fragment: Fragment, *args, output_folder: Path, **kwargs) -> None:
        self.output_folder = Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("mask")

    def compute(self, op_input, op_output, context) -> None:
        result = op_input.receive("mask")
        volume, mask = result["volume"], result["mask"]
        index = {ds.SOPInstanceUID: k for k, ds in enumerate(volume.datasets)}
        order = [index[ds.SOPInstanceUID] for ds in sort_slices(list(volume.datasets))]
        roi = ROI("CTV", mask[order], CTV_COLOR, "CTV")
        path = write_rtstruct(
            rtstruct_dataset(volume.datasets, [roi], DESCRIPTION), self.output_folder / "ctv_rtstruct.dcm"
        )
        log.info("wrote %s", path)


class CTVSegWriterOperator(Operator):
    """Writes `ctv_seg.dcm`: a binary DICOM-SEG with the CTV as an AUTOMATIC segment."""

    def __init__(self, fragment: Fragment, *args, output_folder: Path, model_name: str = "OncoPlan LLMSeg", **kwargs):
        self.output_folder = Path(output_folder)
        self.model_name = model_name
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("mask")

    def compute(self, op_input, op_output, context) -> None:
        result = op_input.receive("mask")
        volume, mask = result["volume"], result["mask"]
        seg = seg_dataset(
            [mask], [CTV_SEGMENT], volume.datasets, DESCRIPTION, algorithm=Algorithm(self.model_name, __version__)
        )
        if seg is None:
            log.warning("empty CTV: no DICOM-SEG written (a SEG cannot have an empty segment)")
            return
        log.info("wrote %s", write_seg(seg, self.output_folder / "ctv_seg.dcm"))
