"""Ground truth on the CT grid: NIfTI label maps and a DICOM-SEG that references the CT."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from oncoplan.seg import SegmentSpec, seg_dataset
from oncoplan.seg import write_seg as write_seg_file
from oncoplan.training.synth.dicom_ct import RESEARCH_ONLY, stable_uid
from oncoplan.training.synth.geometry import Grid


def save_nifti(array: np.ndarray, grid: Grid, path: Path) -> None:
    """Write a (k, r, c) array on `grid` as NIfTI; the affine puts every voxel where the CT has it."""
    img = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), grid.nifti_affine())
    img.header.set_xyzt_units("mm")
    img.set_qform(grid.nifti_affine(), code=1)
    img.set_sform(grid.nifti_affine(), code=1)
    nib.save(img, path)


def save_label_map(masks: dict[str, np.ndarray], order: Sequence[str], grid: Grid, path: Path) -> dict[int, str]:
    """Paint masks in `order` (later wins) into one uint8 map; writes `<path>.json` with the legend."""
    out = np.zeros(grid.shape, dtype=np.uint8)
    legend = {}
    for value, name in enumerate(order, start=1):
        out[masks[name]] = value
        legend[value] = name
    save_nifti(out, grid, path)
    Path(str(path).replace(".nii.gz", ".json")).write_text(json.dumps(legend, indent=1))
    return legend


ANATOMY = codes.SCT.AnatomicalStructure
MORPH = Code("49755003", "SCT", "Morphologically Altered Structure")
PHYSICAL = codes.SCT.PhysicalObject
CTV_CODE = codes.SCT.ClinicalTargetVolume


def write_seg(
    masks: Sequence[np.ndarray],
    specs: Sequence[SegmentSpec],
    ct: Sequence[Dataset],
    path: Path,
    series_number: int,
    description: str,
) -> Path | None:
    """A binary DICOM-SEG of the non-empty masks, referencing the CT slices in `ct` (instance order)."""
    seg = seg_dataset(
        masks,
        specs,
        ct,
        f"{description} ({RESEARCH_ONLY})",
        series_number,
        content_label="GROUNDTRUTH",
        content_description="Synthetic ground truth",
        uid=stable_uid(ct[0].SeriesInstanceUID, "seg", description),
        manufacturer_model_name="oncoplan-synth",
        device_serial_number="synthetic",
    )
    return None if seg is None else write_seg_file(seg, path)
