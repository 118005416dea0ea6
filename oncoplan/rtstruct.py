"""DICOM RT Structure Set: masks on a CT series to closed planar contours and back.

Neither the MONAI Deploy SDK nor highdicom writes RTSTRUCT, and rt-utils' output fails
dciodvfy, so this is a small module on pydicom + scikit-image.

Geometry is taken from each CT slice's own ImagePositionPatient / ImageOrientationPatient /
PixelSpacing, so any orientation and patient position (head- or feet-first) is exact.
Masks are indexed (slice, row, column) with slices in ascending position along the slice
normal (row cosine x column cosine), which is SimpleITK's series order.

Contours follow the 0.5 iso-line of each slice's mask through pixel-edge midpoints, so
rasterising them (pixel centres inside, even-odd rule across a slice's contours) gives the
mask back exactly. Holes are separate contours inside their outer contour; the even-odd rule
is how Eclipse, RayStation and 3D Slicer combine a slice's CLOSED_PLANAR contours.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from skimage.draw import polygon as fill_polygon
from skimage.measure import approximate_polygon, find_contours

from . import __version__
from .errors import InputError
from .fsio import atomic_path

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
INTERPRETED_TYPES = frozenset({"EXTERNAL", "PTV", "CTV", "GTV", "ORGAN", "AVOIDANCE", "CONTROL", "TREATED_VOLUME"})
_TYPE2_KEYS = frozenset(
    {"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID"}
    | {"AccessionNumber", "ReferringPhysicianName"}
)
# The study-reference SOP class every TPS expects in RTReferencedStudySequence (retired but universal).
_STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
_PATIENT_STUDY_KEYS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)


@dataclass(frozen=True)
class ROI:
    """One structure: a boolean mask on the CT grid (see the module doc for the axis order)."""

    name: str
    mask: np.ndarray
    color: tuple[int, int, int] = (255, 0, 0)
    interpreted_type: str = "CTV"
    algorithm: str = "AUTOMATIC"
    description: str | None = None  # ROIDescription (LO, cut to 64 characters), e.g. what the CTV was conditioned on

    def __post_init__(self) -> None:
        if not self.name.strip() or len(self.name) > 64:
            raise ValueError(f"ROI name must be 1-64 characters, got {self.name!r}")
        if self.interpreted_type not in INTERPRETED_TYPES:
            raise ValueError(
                f"ROI {self.name!r}: interpreted type {self.interpreted_type!r} not in {sorted(INTERPRETED_TYPES)}"
            )
        if self.mask.ndim != 3:
            raise ValueError(f"ROI {self.name!r}: mask must be 3-D (slice, row, column), got shape {self.mask.shape}")
        if not all(0 <= c <= 255 for c in self.color):
            raise ValueError(f"ROI {self.name!r}: color components must be 0-255")


@dataclass(frozen=True)
class SliceGeometry:
    """World position of pixel (row, column) on one slice: origin + c*dc*row_cos + r*dr*col_cos."""

    origin: np.ndarray
    row_cosine: np.ndarray
    col_cosine: np.ndarray
    row_spacing: float  # between rows (PixelSpacing[0])
    col_spacing: float  # between columns (PixelSpacing[1])

    @classmethod
    def of(cls, ds: Dataset) -> SliceGeometry:
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        return cls(
            np.asarray(ds.ImagePositionPatient, dtype=float),
            iop[:3],
            iop[3:],
            float(ds.PixelSpacing[0]),
            float(ds.PixelSpacing[1]),
        )

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_cosine, self.col_cosine)

    def to_world(self, rc: np.ndarray) -> np.ndarray:
        """(N, 2) row/column pixel coordinates -> (N, 3) patient mm."""
        return (
            self.origin
            + rc[:, 1:2] * self.col_spacing * self.row_cosine
            + rc[:, 0:1] * self.row_spacing * self.col_cosine
        )

    def to_pixels(self, xyz: np.ndarray) -> np.ndarray:
        d = xyz - self.origin
        return np.stack([d @ self.col_cosine / self.row_spacing, d @ self.row_cosine / self.col_spacing], axis=1)


def sort_slices(ct: Sequence[Dataset]) -> list[Dataset]:
    """CT slices in ascending position along the slice normal; refuses mixed orientations."""
    if not ct:
        raise InputError("RTSTRUCT: no CT slices to reference")
    first = SliceGeometry.of(ct[0])
    for ds in ct[1:]:
        if not np.allclose(ds.ImageOrientationPatient, ct[0].ImageOrientationPatient, atol=1e-4):
            raise InputError(f"RTSTRUCT: slice {ds.SOPInstanceUID} has another orientation than the series")
    return sorted(ct, key=lambda ds: float(np.asarray(ds.ImagePositionPatient, dtype=float) @ first.normal))


def sorted_order(ct: Sequence[Dataset]) -> list[int]:
    """Indices into `ct` in `sort_slices` order: `mask_in_ct_order[sorted_order(ct)]` is what ROI wants."""
    position = {ds.SOPInstanceUID: k for k, ds in enumerate(ct)}
    return [position[ds.SOPInstanceUID] for ds in sort_slices(ct)]


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours (row, column) of one 2-D mask, outer boundaries and holes alike."""
    padded = np.pad(mask.astype(np.uint8), 1)
    out = []
    for c in find_contours(padded, 0.5):
        c = approximate_polygon(c, tolerance=0.0) - 1.0  # drop collinear points; undo the pad
        if len(c) > 1 and np.allclose(c[0], c[-1]):
            c = c[:-1]  # CLOSED_PLANAR contours do not repeat the first point
        if len(c) >= 3:
            out.append(c)
    return out


def rasterise_contours(contours: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixel centres inside the contours of one slice, combined by the even-odd rule."""
    out = np.zeros(shape, dtype=bool)
    for c in contours:
        inside = np.zeros(shape, dtype=bool)
        rr, cc = fill_polygon(c[:, 0], c[:, 1], shape)
        inside[rr, cc] = True
        out ^= inside
    return out


def _copy_patient_and_study(ds: Dataset, ref: Dataset) -> None:
    """Patient and study attributes from the CT; the Type 2 ones are present (empty) even when it lacks them."""
    for key in _PATIENT_STUDY_KEYS:
        if key in ref:
            setattr(ds, key, ref.data_element(key).value)
        elif key in _TYPE2_KEYS:
            setattr(ds, key, "")


def _contour_item(ct_slice: Dataset, points: np.ndarray) -> Dataset:
    item = Dataset()
    image = Dataset()
    image.ReferencedSOPClassUID = ct_slice.SOPClassUID
    image.ReferencedSOPInstanceUID = ct_slice.SOPInstanceUID
    item.ContourImageSequence = DicomSequence([image])
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(points)
    # DS values are at most 16 characters: 0.01 mm is far below any CT's resolution. They are valid DS
    # by construction, so pydicom's per-value regex check (most of this function's time) is skipped.
    with pydicom.config.disable_value_validation():
        item.ContourData = [f"{v:.2f}" for v in points.reshape(-1)]
    return item


def rtstruct_dataset(
    ct: Sequence[Dataset],
    rois: Sequence[ROI],
    series_description: str = "OncoPlan CTV (research use only)",
    label: str = "OncoPlan",
    series_number: int = 901,
    manufacturer: str = "OncoPlan",
    structure_set_description: str = "Automatic contours (research use only; not for clinical use)",
) -> Dataset:
    """An RT Structure Set referencing `ct` (any order), one ROI per mask, contours per slice."""
    slices = sort_slices(ct)
    rows, cols = int(slices[0].Rows), int(slices[0].Columns)
    if not rois:
        raise ValueError("an RT Structure Set needs at least one ROI")
    names = [r.name for r in rois]
    if len(set(names)) != len(names):
        raise ValueError(f"ROI names must be unique, got {names}")
    for roi in rois:
        if roi.mask.shape != (len(slices), rows, cols):
            raise ValueError(f"ROI {roi.name!r}: mask shape {roi.mask.shape} != CT {(len(slices), rows, cols)}")
    ref = slices[0]
    frame = ref.FrameOfReferenceUID
    now = dt.datetime.now()

    ds = Dataset()
    ds.SpecificCharacterSet = ref.get("SpecificCharacterSet", "ISO_IR 100")
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    _copy_patient_and_study(ds, ref)
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate = ds.InstanceCreationDate
    ds.SeriesTime = ds.InstanceCreationTime
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = frame
    ds.PositionReferenceIndicator = ref.get("PositionReferenceIndicator", "")
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = "oncoplan"
    ds.SoftwareVersions = __version__
    ds.InstanceNumber = 1
    ds.StructureSetLabel = label[:16]
    ds.StructureSetName = label[:64]
    ds.StructureSetDescription = structure_set_description[:1024]  # ST
    ds.StructureSetDate = ds.InstanceCreationDate
    ds.StructureSetTime = ds.InstanceCreationTime

    contour_images = []
    for s in slices:
        item = Dataset()
        item.ReferencedSOPClassUID = s.SOPClassUID
        item.ReferencedSOPInstanceUID = s.SOPInstanceUID
        contour_images.append(item)
    series = Dataset()
    series.SeriesInstanceUID = ref.SeriesInstanceUID
    series.ContourImageSequence = DicomSequence(contour_images)
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_COMPONENT_SOP_CLASS
    study.ReferencedSOPInstanceUID = ref.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = frame
    frame_item.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame_item])

    geometry = [SliceGeometry.of(s) for s in slices]
    roi_items, contour_seq, observations = [], [], []
    for number, roi in enumerate(rois, start=1):
        item = Dataset()
        item.ROINumber = number
        item.ReferencedFrameOfReferenceUID = frame
        item.ROIName = roi.name
        item.ROIGenerationAlgorithm = roi.algorithm
        if roi.description:
            item.ROIDescription = roi.description[:64]
        roi_items.append(item)

        contours = []
        for k in np.flatnonzero(roi.mask.reshape(len(slices), -1).any(axis=1)):
            for c in slice_contours(roi.mask[k]):
                contours.append(_contour_item(slices[k], geometry[k].to_world(c)))
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = list(roi.color)
        if contours:  # Type 2 sequence in practice: an empty ROI carries no ContourSequence items
            rc.ContourSequence = DicomSequence(contours)
        contour_seq.append(rc)

        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = roi.interpreted_type
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = DicomSequence(roi_items)
    ds.ROIContourSequence = DicomSequence(contour_seq)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    return ds


# Explicit VR gives a DS value a 2-byte length: ContourData of more than ~2,700 points (a body
# outline, a ragged contour) does not fit, and pydicom would write it as UN, which no TPS reads.
EXPLICIT_VR_MAX_LENGTH = 0xFFFE


def _fits_explicit_vr(ds: Dataset) -> bool:
    return all(
        len("\\".join(str(v) for v in contour.ContourData)) <= EXPLICIT_VR_MAX_LENGTH
        for roi in ds.get("ROIContourSequence", [])
        for contour in roi.get("ContourSequence", [])
    )


def write_rtstruct(ds: Dataset, path: str | Path) -> Path:
    """Save as Explicit VR Little Endian Part-10, or Implicit VR Little Endian (4-byte lengths; the
    transfer syntax every DICOM application accepts) when a contour is too long for explicit VR. The
    file appears only when complete."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if _fits_explicit_vr(ds) else ImplicitVRLittleEndian
    ds.file_meta = meta
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def read_rtstruct(path: str | Path, ct: Sequence[Dataset]) -> dict[str, np.ndarray]:
    """Every ROI of an RTSTRUCT rasterised on the CT grid (sorted as `sort_slices`), by name."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # any parse failure is bad input
        raise InputError(f"{path}: not a readable DICOM file ({exc})") from None
    if ds.get("Modality") != "RTSTRUCT" or "StructureSetROISequence" not in ds:
        raise InputError(f"{path}: not an RT Structure Set (Modality {ds.get('Modality')!r})")
    slices = sort_slices(ct)
    geometry = [SliceGeometry.of(s) for s in slices]
    frames = {s.FrameOfReferenceUID for s in slices}
    positions = np.array([g.origin @ geometry[0].normal for g in geometry])
    tolerance = 0.5 * (float(np.min(np.diff(positions))) if len(positions) > 1 else 1.0)
    by_uid = {s.SOPInstanceUID: k for k, s in enumerate(slices)}
    shape = (len(slices), int(slices[0].Rows), int(slices[0].Columns))
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    for r in ds.StructureSetROISequence:
        if r.get("ReferencedFrameOfReferenceUID") not in frames:
            raise InputError(f"{path}: ROI {r.ROIName!r} is on another frame of reference than the CT")
    out = {}
    for rc in ds.get("ROIContourSequence", []):
        per_slice: dict[int, list[np.ndarray]] = {}
        for c in rc.get("ContourSequence", []):
            pts = np.asarray(c.ContourData, dtype=float).reshape(-1, 3)
            refs = c.get("ContourImageSequence")
            if refs and refs[0].ReferencedSOPInstanceUID in by_uid:
                k = by_uid[refs[0].ReferencedSOPInstanceUID]
            else:  # no (or foreign) image reference: find the slice by position
                d = np.abs(positions - float(pts[0] @ geometry[0].normal))
                k = int(np.argmin(d))
                if d[k] > tolerance:
                    raise InputError(
                        f"{path}: a contour of {names.get(int(rc.ReferencedROINumber))!r} lies between CT slices"
                    )
            per_slice.setdefault(k, []).append(geometry[k].to_pixels(pts))
        mask = np.zeros(shape, dtype=bool)
        for k, contours in per_slice.items():
            mask[k] = rasterise_contours(contours, shape[1:])
        out[names[int(rc.ReferencedROINumber)]] = mask
    return out
