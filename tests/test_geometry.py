"""Geometry is exact for head-first and feet-first series: DICOM, NIfTI and the anatomy agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from oncoplan.training.synth import breast as B
from oncoplan.training.synth.dicom_ct import Patient, Series, Study, ct_datasets, stable_uid, write_datasets
from oncoplan.training.synth.geometry import Grid
from oncoplan.training.synth.labels import save_nifti
from oncoplan.training.synth.write_breast import write_case

from .dicom_validate import dciodvfy_available, validate_all


@pytest.mark.parametrize("position", ["HFS", "FFS"])
def test_dicom_and_nifti_put_the_heart_on_the_patients_left(tmp_path: Path, position: str) -> None:
    rng = np.random.default_rng(0)
    record = B.BreastRecord("G", 50, (B.SideRecord("right", "TM", "N0", "T1"),), "None", False, False)
    anatomy = B.sample_anatomy(record, rng)
    grid = Grid.centred((30, 100, 90), (8.0, 4.0, 4.4), (0.0, 0.0, -90.0), position)
    masks = B.structure_masks(anatomy, grid)
    hu = B.render_ct(masks, grid, B.SITES["internal"], rng)
    uid = lambda *p: stable_uid("geometry", position, *p)  # noqa: E731
    ct = ct_datasets(
        hu,
        grid,
        Patient("G", "SYNTHETIC^G", "19700101", "F", 50),
        Study(uid("st"), "20200101", "090000", "A1", "1", "T"),
        Series(uid("se"), 2, "T", uid("for"), "CHEST"),
    )
    write_datasets(ct, tmp_path / "dicom")
    save_nifti(masks["heart"].astype(np.uint8), grid, tmp_path / "heart.nii.gz")

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "dicom")))
    img = reader.Execute()
    heart = sitk.Resample(
        sitk.ReadImage(str(tmp_path / "heart.nii.gz")), img, sitk.Transform(), sitk.sitkNearestNeighbor
    )
    h = sitk.GetArrayFromImage(heart).astype(bool)
    assert h.sum() == masks["heart"].sum()
    # Same voxels carry the heart in the DICOM grid as in the analytic anatomy.
    idx = np.argwhere(h)[:, ::-1]
    world = np.array([img.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in idx[::50]])
    assert world[:, 0].mean() > 5.0  # LPS +x is the patient's left
    assert np.all(anatomy.regions["heart"].inside(world.astype(np.float32)))
    # Mastectomy on the right: breast tissue only on the patient's left.
    assert masks["breast_left"].any() and not masks["breast_right"].any()
    first = pydicom.dcmread(sorted((tmp_path / "dicom").glob("*.dcm"))[0])
    assert first.PatientPosition == position
    assert float(first.ImageOrientationPatient[0]) == (1.0 if position == "HFS" else -1.0)


@pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy (dicom3tools) not installed")
def test_one_full_size_case_is_clinical_and_valid(tmp_path: Path) -> None:
    row = write_case(tmp_path, 0, seed=11, site_name="external", size="full")
    assert 0.6 <= float(row["pixel_spacing_mm"]) <= 1.0
    assert row["rows"] in (448, 512) and row["slice_thickness_mm"] in (2.0, 2.5)
    files = sorted(tmp_path.rglob("*.dcm"))
    assert len(files) == int(row["slices"]) + 1
    assert validate_all(files) == {}
