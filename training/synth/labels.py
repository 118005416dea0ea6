"""Ground truth on the CT grid: NIfTI label maps and a DICOM-SEG that references the CT."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from .dicom_ct import RESEARCH_ONLY, stable_uid
from .geometry import Grid


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


@dataclass(frozen=True)
class SegmentSpec:
    """What a segment is, in DICOM terms."""

    label: str
    category: Code
    type: Code


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
    keep = [(m, s) for m, s in zip(masks, specs, strict=True) if m.any()]
    if not keep:
        return None
    pixels = np.stack([m for m, _ in keep], axis=-1).astype(bool)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=spec.label,
            segmented_property_category=spec.category,
            segmented_property_type=spec.type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            tracking_uid=stable_uid(ct[0].SeriesInstanceUID, "segment", spec.label),
            tracking_id=spec.label,
        )
        for i, (_, spec) in enumerate(keep, start=1)
    ]
    series_uid = stable_uid(ct[0].SeriesInstanceUID, "seg", description)
    seg = hd.seg.Segmentation(
        source_images=list(ct),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=stable_uid(series_uid, "instance"),
        instance_number=1,
        manufacturer="OncoPlan",
        manufacturer_model_name="oncoplan-synth",
        software_versions="0.1.0",
        device_serial_number="synthetic",
        series_description=f"{description} ({RESEARCH_ONLY})"[:64],
        content_description="Synthetic ground truth"[:64],
        content_label="GROUNDTRUTH",
    )
    seg.save_as(path)
    return path
