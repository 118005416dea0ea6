"""DICOM Segmentation (binary) of masks on a CT series, through highdicom.

One writer for model output and synthetic ground truth alike. Masks are (slice, row, column)
in the order of the `ct` datasets given; segments that are empty are left out (a SEG segment
must have at least one frame). Every object says research use only in its series description.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from .fsio import atomic_path

# highdicom warns about a one-component PatientName ("DOE") it copies from the source CT by quoting the name:
# a patient identifier in a log line. Every writer of SR, SEG and RTSTRUCT imports this module.
warnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent the intended person name")

RESEARCH_USE = "research use only"
AI_FAMILY = Code("123109", "DCM", "Artificial Intelligence")


@dataclass(frozen=True)
class SegmentSpec:
    """What a segment is, in DICOM terms (SNOMED CT codes where they exist)."""

    label: str
    category: Code
    type: Code
    color: tuple[int, int, int] | None = None  # RGB 0-255; None: the next colour of PALETTE


# Display colours (RGB) of segments that name none: viewers otherwise pick their own, and two viewers of
# one SEG then disagree. Written as RecommendedDisplayCIELabValue, converted by highdicom.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 160, 255),
    (255, 200, 0),
    (0, 200, 80),
    (200, 0, 255),
    (255, 120, 0),
)


@dataclass(frozen=True)
class Algorithm:
    """The model that produced the masks (AUTOMATIC segments); None in `seg_dataset` = MANUAL."""

    name: str
    version: str
    family: Code = AI_FAMILY


def seg_dataset(
    masks: Sequence[np.ndarray],
    specs: Sequence[SegmentSpec],
    ct: Sequence[Dataset],
    series_description: str,
    series_number: int = 902,
    algorithm: Algorithm | None = None,
    content_label: str = "OUTPUT",
    content_description: str | None = None,
    uid: str | None = None,
    segment_descriptions: Sequence[str | None] | None = None,
    manufacturer_model_name: str = "oncoplan",
    software_versions: str = "0.1.0",
    device_serial_number: str = "oncoplan",
) -> hd.seg.Segmentation | None:
    """A binary SEG of the non-empty masks referencing `ct`; None when every mask is empty.

    `uid` makes the series and instance UIDs reproducible (derived from it); otherwise fresh.
    `segment_descriptions` (one per mask, or None) become each segment's SegmentDescription (LO, 64).
    """
    texts = list(segment_descriptions) if segment_descriptions is not None else [None] * len(masks)
    text_of = {id(s): t for s, t in zip(specs, texts, strict=True)}
    keep = [(m, s) for m, s in zip(masks, specs, strict=True) if m.any()]
    if not keep:
        return None
    for m, s in keep:
        if m.shape != (len(ct), int(ct[0].Rows), int(ct[0].Columns)):
            raise ValueError(f"segment {s.label!r}: mask shape {m.shape} does not match the CT")
    identification = (
        hd.AlgorithmIdentificationSequence(name=algorithm.name, family=algorithm.family, version=algorithm.version)
        if algorithm
        else None
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=spec.label,
            segmented_property_category=spec.category,
            segmented_property_type=spec.type,
            algorithm_type=(
                hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if algorithm else hd.seg.SegmentAlgorithmTypeValues.MANUAL
            ),
            algorithm_identification=identification,
            tracking_uid=hd.UID() if uid is None else _derived(uid, "segment", spec.label),
            tracking_id=spec.label,
            display_color=hd.color.CIELabColor.from_rgb(*(spec.color or PALETTE[(i - 1) % len(PALETTE)])),
        )
        for i, (_, spec) in enumerate(keep, start=1)
    ]
    for item, (_, spec) in zip(descriptions, keep, strict=True):
        if text_of.get(id(spec)):
            item.SegmentDescription = text_of[id(spec)][:64]
    if RESEARCH_USE not in series_description.lower():  # kept when the 64-character limit cuts
        suffix = f" ({RESEARCH_USE})"
        series_description = f"{series_description[: 64 - len(suffix)]}{suffix}"
    return hd.seg.Segmentation(
        source_images=list(ct),
        pixel_array=np.stack([m for m, _ in keep], axis=-1).astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid() if uid is None else _derived(uid, "series"),
        series_number=series_number,
        sop_instance_uid=generate_uid() if uid is None else _derived(uid, "instance"),
        instance_number=1,
        manufacturer="OncoPlan",
        manufacturer_model_name=manufacturer_model_name,
        software_versions=software_versions,
        device_serial_number=device_serial_number,
        series_description=series_description[:64],
        content_description=(content_description or series_description)[:64],
        content_label=content_label,
    )


def _derived(seed: str, *parts: str) -> str:
    return generate_uid(entropy_srcs=[seed, *parts])


def write_seg(seg: Dataset, path: str | Path) -> Path:
    """Save a SEG; the file appears only when complete."""
    path = Path(path)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path
