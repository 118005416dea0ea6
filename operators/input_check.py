"""The input folder, checked before a graph starts: each problem is one line naming the file."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from oncoplan.errors import InputError

from .ct_volume import check_geometry

IGNORED = {"clinical.json", "DICOMDIR"}  # side files an input folder may carry


def _expected_pixel_bytes(ds: pydicom.Dataset) -> int:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * (int(ds.BitsAllocated) // 8) * frames


def check_dicom_file(path: Path) -> pydicom.Dataset:
    """A readable, complete DICOM file (header and, for images, all pixel bytes)."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise InputError(f"{path}: not a DICOM file") from None
    except Exception as exc:  # truncated or corrupt: pydicom raises many types
        raise InputError(f"{path}: unreadable DICOM ({type(exc).__name__}: {exc})") from None
    if "SOPClassUID" not in ds:
        raise InputError(f"{path}: DICOM file without SOPClassUID")
    encapsulated = ds.file_meta.TransferSyntaxUID.is_encapsulated
    if "PixelData" in ds and not encapsulated and len(ds.PixelData) < (want := _expected_pixel_bytes(ds)):
        raise InputError(f"{path}: truncated pixel data ({len(ds.PixelData)} of {want} bytes)")
    return ds


def check_input_folder(folder: str | Path, modality: str = "CT", single_series: bool = True) -> list[pydicom.Dataset]:
    """Every file under `folder` must be DICOM and complete, and at least one must be `modality`.

    With `single_series` there must be exactly one `modality` series, with sound geometry; without it
    (a multi-phase study) the app's selector picks the series and the volume check judges its geometry.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: input folder does not exist")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in IGNORED and not p.name.startswith("."))
    if not files:
        raise InputError(f"{folder}: input folder is empty")
    datasets = [check_dicom_file(p) for p in files]
    series: dict[str, list[pydicom.Dataset]] = {}
    for ds in datasets:
        if ds.get("Modality") == modality:
            series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    if not series:
        found = sorted({str(ds.get("Modality", "?")) for ds in datasets})
        raise InputError(f"{folder}: no {modality} series (found modalities {', '.join(found)})")
    if not single_series:
        return datasets
    if len(series) > 1:
        sizes = ", ".join(f"{uid} ({len(v)} slices)" for uid, v in series.items())
        raise InputError(f"{folder}: {len(series)} candidate {modality} series ({sizes}); give one series per run")
    ((uid, slices),) = series.items()
    check_geometry(slices, f"{folder}: {modality} series {uid}")
    return datasets
