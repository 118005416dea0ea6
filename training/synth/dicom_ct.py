"""CT Image Storage writer for synthetic series: every module dciodvfy expects, exact geometry.

Pixels are stored unsigned with RescaleIntercept -1024 (as GE scanners do), one file per
slice, Explicit VR Little Endian.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from oncoplan.training.synth.geometry import Grid

RESEARCH_ONLY = "RESEARCH USE ONLY - SYNTHETIC"
_INTERCEPT = -1024


def stable_uid(*parts: object) -> str:
    """A new UID on every call: pydicom ignores `entropy_srcs` under the 2.25 root (prefix=None), so the
    parts only say what the UID is for. A regenerated cohort is thus new to a PACS (the same seed gives the
    same pixels, never the same UIDs), and two runs of the generator never collide in one archive."""
    return generate_uid(prefix=None, entropy_srcs=[repr(p) for p in parts])


@dataclass(frozen=True)
class Patient:
    patient_id: str
    name: str
    birth_date: str  # YYYYMMDD
    sex: str  # M / F / O
    age_years: int


@dataclass(frozen=True)
class Study:
    uid: str
    date: str  # YYYYMMDD
    time: str  # HHMMSS
    accession: str
    study_id: str
    description: str


@dataclass(frozen=True)
class Series:
    uid: str
    number: int
    description: str
    frame_of_reference_uid: str
    body_part: str
    contrast_agent: str | None = None  # None: non-contrast; else the agent name
    contrast_route: str = "IV"
    manufacturer: str = "OncoPlan Synthetic"
    model: str = "Phantom CT"
    kernel: str = "STANDARD"
    kvp: float = 120.0
    extra: dict[str, object] = field(default_factory=dict)


def _base_dataset(patient: Patient, study: Study, series: Series, grid: Grid) -> Dataset:
    ds = Dataset()
    # Patient
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{patient.age_years:03d}Y"
    ds.PatientIdentityRemoved = "YES"  # synthetic: no real identity exists
    ds.DeidentificationMethod = "Synthetic data, no real patient"
    # General Study
    ds.StudyInstanceUID = study.uid
    ds.StudyDate = study.date
    ds.StudyTime = study.time
    ds.ReferringPhysicianName = ""
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession
    ds.StudyDescription = study.description
    # General Series
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series.uid
    ds.SeriesNumber = series.number
    ds.SeriesDescription = series.description
    ds.SeriesDate = study.date
    ds.SeriesTime = study.time
    ds.PatientPosition = grid.patient_position
    ds.BodyPartExamined = series.body_part
    ds.OperatorsName = ""
    # Frame of Reference
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = series.manufacturer
    ds.ManufacturerModelName = series.model
    ds.InstitutionName = "OncoPlan synthetic site"
    ds.SoftwareVersions = "oncoplan-synth"
    # Image Plane / Pixel
    ds.PixelSpacing = [f"{grid.row_spacing:.6g}", f"{grid.col_spacing:.6g}"]
    ds.ImageOrientationPatient = [f"{v:.6g}" for v in grid.image_orientation()]
    ds.SliceThickness = f"{grid.slice_spacing:.6g}"
    ds.SpacingBetweenSlices = f"{grid.slice_spacing:.6g}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = grid.rows
    ds.Columns = grid.cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    # CT Image
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.RescaleIntercept = str(_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = f"{series.kvp:g}"
    ds.AcquisitionNumber = 1
    ds.ConvolutionKernel = series.kernel
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.WindowCenterWidthExplanation = "SOFT TISSUE"
    if series.contrast_agent is not None:
        ds.ContrastBolusAgent = series.contrast_agent
        ds.ContrastBolusRoute = series.contrast_route
    # SOP Common
    ds.SOPClassUID = CTImageStorage
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageComments = RESEARCH_ONLY
    for keyword, value in series.extra.items():
        setattr(ds, keyword, value)
    return ds


def ct_datasets(volume_hu: np.ndarray, grid: Grid, patient: Patient, study: Study, series: Series) -> list[Dataset]:
    """One CT Image Storage dataset per slice of `volume_hu` (shape = grid.shape), in instance order."""
    if volume_hu.shape != grid.shape:
        raise ValueError(f"volume shape {volume_hu.shape} does not match grid {grid.shape}")
    stored = np.clip(np.rint(volume_hu) - _INTERCEPT, 0, 65535).astype(np.uint16)
    base = _base_dataset(patient, study, series, grid)
    out = []
    for k in range(grid.slices):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = stable_uid(series.uid, "instance", k)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in grid.image_position(k)]
        ds.SliceLocation = f"{grid.image_position(k)[2]:.6f}"
        ds.ContentDate = study.date
        ds.ContentTime = study.time
        plane = stored[k]
        ds.SmallestImagePixelValue = int(plane.min())
        ds.LargestImagePixelValue = int(plane.max())
        ds.PixelData = plane.tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        out.append(ds)
    return out


def write_datasets(datasets: list[Dataset], folder: Path, stem: str = "CT") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{stem}{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
