"""The selected CT series as one volume with exact geometry, checked before any model sees it.

The SDK's series-to-volume operator stacks slices (slice, row, column) in its own sorted
order; here the affine is rebuilt from the same datasets' ImagePositionPatient,
ImageOrientationPatient and PixelSpacing, so any orientation and patient position is exact,
and series that no model should see (one slice, uneven spacing, missing geometry) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from oncoplan.errors import InputError

GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
SPACING_TOLERANCE = 0.01  # relative spread of slice gaps accepted as "even"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class CTVolume:
    """HU voxels (slice, row, column) and the datasets of those slices, in the same order."""

    hu: np.ndarray
    datasets: tuple[Dataset, ...]
    where: str = "CT series"

    def __post_init__(self) -> None:
        check_geometry(self.datasets, self.where)
        if self.hu.shape != (len(self.datasets), int(self.datasets[0].Rows), int(self.datasets[0].Columns)):
            raise InputError(f"{self.where}: pixel data shape {self.hu.shape} does not match its slices")

    def affine_lps(self) -> np.ndarray:
        """4x4 from index (column, row, slice) to patient LPS mm."""
        first = self.datasets[0]
        iop = np.asarray(first.ImageOrientationPatient, dtype=float)
        row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
        p0 = np.asarray(first.ImagePositionPatient, dtype=float)
        pn = np.asarray(self.datasets[-1].ImagePositionPatient, dtype=float)
        out = np.eye(4)
        out[:3, 0] = iop[:3] * col_spacing
        out[:3, 1] = iop[3:] * row_spacing
        out[:3, 2] = (pn - p0) / (len(self.datasets) - 1)
        out[:3, 3] = p0
        return out

    def affine_ras(self) -> np.ndarray:
        return LPS_TO_RAS @ self.affine_lps()

    def metatensor(self):
        """(column, row, slice) float32 MetaTensor with the RAS affine, as MONAI's loaders give."""
        from monai.data import MetaTensor

        array = np.ascontiguousarray(self.hu.transpose(2, 1, 0), dtype=np.float32)
        return MetaTensor(array, affine=self.affine_ras(), meta={"space": "RAS", "original_channel_dim": "no_channel"})

    def from_index_order(self, array: np.ndarray) -> np.ndarray:
        """A (column, row, slice) array on this grid back to (slice, row, column)."""
        return np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0))


def check_geometry(datasets: tuple[Dataset, ...] | list[Dataset], where: str) -> None:
    """One slab of parallel, evenly spaced slices with complete geometry (any order)."""
    if len(datasets) < 2:
        raise InputError(f"{where}: a single slice; a 3-D CT series is needed")
    for ds in datasets:
        missing = [t for t in GEOMETRY_TAGS if t not in ds or ds.data_element(t).value in (None, "")]
        if missing:
            raise InputError(f"{where}: slice {_slice_name(ds)} lacks {', '.join(missing)}")
    iops = np.array([np.asarray(ds.ImageOrientationPatient, dtype=float) for ds in datasets])
    if (turned := int((np.abs(iops - iops[0]).max(axis=1) > 1e-4).sum())) > 0:
        raise InputError(f"{where}: slices have different orientations ({turned} of {len(iops)} unlike the first)")
    if len({(int(ds.Rows), int(ds.Columns)) for ds in datasets}) > 1:
        raise InputError(f"{where}: slices have different matrix sizes")
    normal = np.cross(iops[0][:3], iops[0][3:])
    z = np.sort([np.asarray(ds.ImagePositionPatient, dtype=float) @ normal for ds in datasets])
    gaps = np.diff(z)
    if np.any(np.abs(gaps) < 1e-3):
        raise InputError(f"{where}: two slices at the same position")
    if np.ptp(gaps) > SPACING_TOLERANCE * gaps.mean():
        step = float(np.median(gaps))
        multiples = gaps / step
        missing = int(np.rint(multiples).sum() - len(gaps))
        what = f"{gaps.min():.2f}-{gaps.max():.2f} mm"
        if missing > 0 and np.abs(multiples - np.rint(multiples)).max() < 0.05:  # whole steps: slices left out
            what += f": {missing} slice{'s' if missing > 1 else ''} missing"
        raise InputError(f"{where}: inconsistent slice spacing ({what})")


def _slice_name(ds: Dataset) -> str:
    """A slice by its file name where it was read from a file, else its InstanceNumber (no UID)."""
    name = getattr(ds, "filename", None)
    return repr(Path(name).name) if isinstance(name, str) and name else f"#{ds.get('InstanceNumber', '?')}"


def from_selected_series(study_selected_series_list, image) -> CTVolume:
    """A CTVolume from the SDK selector's output and its series-to-volume Image (same slice order)."""
    if not study_selected_series_list or not study_selected_series_list[0].selected_series:
        raise InputError("input: no CT series matched the selection rules")
    series = study_selected_series_list[0].selected_series[0].series
    datasets = tuple(s.get_native_sop_instance() for s in series.get_sop_instances())
    return CTVolume(np.asarray(image.asnumpy()), datasets, f"CT series {series.SeriesInstanceUID}")


def from_datasets(datasets: list[Dataset] | tuple[Dataset, ...], where: str) -> CTVolume:
    """A CTVolume read from one series' datasets (slices ordered along their normal, HU by the modality LUT):
    for a series the SDK's series-to-volume operator does not convert (the arterial phase beside the
    portal-venous one)."""
    from pydicom.pixels import apply_modality_lut

    if not datasets:
        raise InputError(f"{where}: no slices")
    check_geometry(list(datasets), where)
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    ordered = sorted(datasets, key=lambda ds: float(np.asarray(ds.ImagePositionPatient, dtype=float) @ normal))
    try:
        hu = np.stack([apply_modality_lut(ds.pixel_array, ds).astype(np.float32) for ds in ordered])
    except (AttributeError, ValueError, RuntimeError) as exc:  # missing pixel data, a syntax with no decoder
        raise InputError(f"{where}: pixel data cannot be read ({exc})") from None
    return CTVolume(hu, tuple(ordered), where)


def on_grid_of(volume: CTVolume, reference: CTVolume) -> CTVolume:
    """`volume` resampled onto `reference`'s grid by physical position (linear; -1024 HU outside it): two
    series of one frame of reference, e.g. the arterial phase on the portal-venous phase's grid."""
    from scipy import ndimage

    # index (column, row, slice) of the reference -> index of `volume`, through patient coordinates.
    mapping = np.linalg.inv(volume.affine_lps()) @ reference.affine_lps()
    source = volume.hu.transpose(2, 1, 0)  # (column, row, slice), as the affines index it
    shape = (int(reference.datasets[0].Columns), int(reference.datasets[0].Rows), len(reference.datasets))
    out = ndimage.affine_transform(source, mapping[:3, :3], mapping[:3, 3], shape, order=1, cval=-1024.0)
    return CTVolume(reference.from_index_order(out).astype(np.float32), reference.datasets, volume.where)
