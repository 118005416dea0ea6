"""Small readers the cohort tests share."""

from __future__ import annotations

import csv
from pathlib import Path

import SimpleITK as sitk


def cohort_rows(cohort: Path) -> list[dict[str, str]]:
    with open(cohort / "cohort.csv") as fh:
        return list(csv.DictReader(fh))


def read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()
