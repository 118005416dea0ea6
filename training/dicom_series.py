"""Reading one DICOM image series into SimpleITK (shared by every bundle's data preparation)."""

from __future__ import annotations

from pathlib import Path

from oncoplan.errors import InputError


def read_ct_series(dicom_dir: Path):
    """The one CT series in a folder as a SimpleITK image, slices ordered by position (errors name the folder)."""
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(dicom_dir)) or []
    if not ids:
        raise InputError(f"{dicom_dir}: no DICOM image series found")
    if len(ids) > 1:
        raise InputError(f"{dicom_dir}: {len(ids)} image series found; expected one CT series")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(dicom_dir), ids[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute(), list(files)
