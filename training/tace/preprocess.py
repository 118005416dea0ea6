"""Preprocessing shared by the three TACE world-model bundles (MeWM seed, appendix A.1, B.2-B.4).

Reading (DICOM CT series, NIfTI label maps, DICOM-SEG), resampling, longitudinal registration
of the post-treatment scan onto the pre-treatment one, and connected-component filtering.
Intensity clipping ([-175, 600] HU -> [-1, 1]) and the 96^3 foreground-ratio patch sampling
are MONAI transforms in the bundles' configs, where their parameters belong.

All images are SimpleITK images in LPS physical space, so a label map written on one grid is
carried onto another by physical position, never by voxel index.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from oncoplan.errors import InputError
from oncoplan.tace.labels import LABELS, TUMOR_LABELS
from oncoplan.training.dicom_series import read_ct_series

A1_SPACING_MM = (0.8, 0.8, 3.0)  # dataset standardisation (seed A.1)
MIN_COMPONENT_VOXELS = 300  # seed A.1: smaller islands are noise, counted on the A.1 grid
# The rule is a volume: 300 voxels of 0.8 x 0.8 x 3.0 mm = 576 mm3. Counted on a coarser grid as
# voxels it would erase real lesions (300 voxels of 3 mm are 8.1 cm3, a 2.5 cm tumor).
MIN_COMPONENT_MM3 = MIN_COMPONENT_VOXELS * float(np.prod(A1_SPACING_MM))


def read_series(folder: str | Path) -> sitk.Image:
    """One DICOM CT series as a float32 HU image."""
    image, _ = read_ct_series(Path(folder))
    return sitk.Cast(image, sitk.sitkFloat32)


def remap_labels(label_map: sitk.Image, legend: Mapping[int, str]) -> sitk.Image:
    """Keep the classes the models learn (`LABELS`) from a label map with its own legend; others -> 0."""
    src = sitk.GetArrayViewFromImage(label_map)
    out = np.zeros(src.shape, dtype=np.uint8)
    for value, name in legend.items():
        if name in LABELS:
            out[src == int(value)] = LABELS[name]
    return _like(out, label_map)


def read_seg_labels(seg_path: str | Path, reference: sitk.Image) -> sitk.Image:
    """A DICOM-SEG (TCIA layout) as a `LABELS` map on `reference`'s grid.

    Segments are matched by label/description: "liver" -> liver, anything naming a tumor, mass,
    lesion or viable tissue -> viable (a real SEG does not split the treated lesion), necrosis and
    lipiodol by name. Frames are placed by their ImagePositionPatient, so any slice order works.
    """
    import highdicom as hd

    seg_path = Path(seg_path)
    try:
        seg = hd.seg.segread(seg_path)
    except Exception as exc:  # pydicom/highdicom raise many types for a broken file
        raise InputError(f"{seg_path}: not a readable DICOM-SEG ({exc})") from exc
    out = np.zeros(sitk.GetArrayViewFromImage(reference).shape, dtype=np.uint8)
    rows, cols = int(seg.Rows), int(seg.Columns)
    pixels = seg.pixel_array.reshape(-1, rows, cols)
    if (rows, cols) != out.shape[1:]:
        ct = f"{out.shape[1]}x{out.shape[2]}"
        raise InputError(f"{seg_path}: SEG frames are {rows}x{cols}, the referenced CT is {ct}")
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        value = segment_label(seg.get_segment_description(number))
        if value == 0:
            continue
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        z = reference.TransformPhysicalPointToIndex([float(v) for v in position])[2]
        if not 0 <= z < out.shape[0]:
            raise InputError(f"{seg_path}: frame {index + 1} lies outside the referenced CT")
        plane = out[z]
        plane[pixels[index] > 0] = np.maximum(plane[pixels[index] > 0], value)
    return _like(out, reference)


def segment_label(description: object) -> int:
    """Our label value for a DICOM-SEG segment from the words of its SegmentLabel/SegmentDescription (0: none)."""
    text = " ".join(str(getattr(description, a, "")) for a in ("SegmentLabel", "SegmentDescription")).lower()
    if "necros" in text:
        return LABELS["necrosis"]
    if "lipiodol" in text:
        return LABELS["lipiodol"]
    if any(word in text for word in ("tumor", "tumour", "mass", "lesion", "viable", "neoplasm")):
        return LABELS["viable"]
    if "liver" in text:
        return LABELS["liver"]
    return 0


def resample(image: sitk.Image, spacing: Sequence[float], label: bool = False) -> sitk.Image:
    """Resample to `spacing` (mm) over the same physical extent (nearest neighbour for labels)."""
    old_size, old_spacing = np.array(image.GetSize()), np.array(image.GetSpacing())
    size = np.maximum(np.round(old_size * old_spacing / np.asarray(spacing)), 1).astype(int)
    return sitk.Resample(
        image,
        [int(s) for s in size],
        sitk.Transform(),
        sitk.sitkNearestNeighbor if label else sitk.sitkLinear,
        image.GetOrigin(),
        [float(s) for s in spacing],
        image.GetDirection(),
        0 if label else -1024.0,
        image.GetPixelID(),
    )


def onto(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None, label: bool = False):
    """`image` resampled onto `reference`'s grid through `transform` (fixed -> moving points)."""
    return sitk.Resample(
        image,
        reference,
        transform or sitk.Transform(),
        sitk.sitkNearestNeighbor if label else sitk.sitkLinear,
        0 if label else -1024.0,
        image.GetPixelID(),
    )


def register(
    fixed: sitk.Image, moving: sitk.Image, deformable: bool = True, mesh_mm: float = 80.0, seed: int = 0
) -> sitk.Transform:
    """Post-treatment CT (`moving`) onto pre-treatment CT (`fixed`): rigid, then B-spline.

    Mattes mutual information (the phases' contrast differs between studies), multi-resolution,
    sampled inside the body of the fixed scan so air does not dominate the metric. Returns the
    fixed -> moving transform that `onto` expects.
    """
    fixed_f = sitk.Clamp(fixed, sitk.sitkFloat32, -300.0, 600.0)
    moving_f = sitk.Clamp(moving, sitk.sitkFloat32, -300.0, 600.0)
    body = sitk.BinaryThreshold(fixed, -500.0, 1e6, 1, 0)

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.15, seed)
    reg.SetMetricFixedMask(body)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=150, relaxationFactor=0.6
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    start = sitk.CenteredTransformInitializer(
        fixed_f, moving_f, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    reg.SetInitialTransform(start, inPlace=False)
    rigid = reg.Execute(fixed_f, moving_f)
    if not deformable:
        return rigid

    extent = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
    mesh = [max(1, round(float(e) / mesh_mm)) for e in extent]
    bspline = sitk.BSplineTransformInitializer(fixed_f, mesh, order=3)
    reg.SetMovingInitialTransform(rigid)
    reg.SetInitialTransform(bspline, inPlace=True)
    # One half-resolution level: the residual after the rigid step is a few mm of smooth motion.
    reg.SetShrinkFactorsPerLevel([2])
    reg.SetSmoothingSigmasPerLevel([1.0])
    reg.SetMetricSamplingPercentagePerLevel([0.05], seed)
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=40, maximumNumberOfCorrections=5)
    reg.Execute(fixed_f, moving_f)
    deformed = sitk.CompositeTransform([rigid, bspline])
    # Keep the deformable step only where it improves the similarity at full resolution: on
    # scans with little deformation it can trade a better metric at half resolution for a
    # worse fit (seen on the synthetic cohort).
    better = _similarity(fixed_f, moving_f, body, deformed) < _similarity(fixed_f, moving_f, body, rigid)
    return deformed if better else rigid


def _similarity(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image, transform: sitk.Transform) -> float:
    """Mattes MI (lower is better) of `moving` through `transform`, over every voxel of `mask`."""
    probe = sitk.ImageRegistrationMethod()
    probe.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    probe.SetMetricFixedMask(mask)
    probe.SetInterpolator(sitk.sitkLinear)
    probe.SetInitialTransform(transform)
    return float(probe.MetricEvaluate(fixed, moving))


def min_voxels_at(spacing: Sequence[float]) -> int:
    """The seed's 300-voxel island rule as a voxel count on a grid of `spacing` mm (same volume)."""
    return max(1, math.ceil(MIN_COMPONENT_MM3 / float(np.prod(spacing)) - 1e-9))


def keep_components(mask: np.ndarray, min_voxels: int = MIN_COMPONENT_VOXELS) -> np.ndarray:
    """Drop 26-connected islands smaller than `min_voxels` (seed A.1's filtering)."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count == 0:
        return mask.astype(bool)
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[components]


def filter_label_map(labels: np.ndarray, min_voxels: int = MIN_COMPONENT_VOXELS) -> np.ndarray:
    """Connected-component filtering of a `LABELS` map: liver and the whole tumor, then tumor kept in the liver."""
    liver_all = keep_components(labels > 0, min_voxels)
    tumor = keep_components(np.isin(labels, TUMOR_LABELS), min_voxels) & liver_all
    out = np.where(liver_all, LABELS["liver"], 0).astype(np.uint8)
    out[tumor] = labels[tumor]
    return out


def liver_dice(a: sitk.Image, b: sitk.Image) -> float:
    """Dice of the whole liver (liver + tumor) of two label maps on one grid."""
    x, y = sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0
    total = int(x.sum()) + int(y.sum())
    return 2.0 * float(np.logical_and(x, y).sum()) / total if total else 1.0


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image
