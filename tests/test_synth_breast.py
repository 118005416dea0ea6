"""Synthetic breast RT cohort: tree, valid DICOM, exact geometry, text-dependent CTV, sites."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from oncoplan.training.synth import breast as B
from oncoplan.training.synth.cohort import generate_cohort
from oncoplan.training.synth.geometry import Grid
from oncoplan.training.synth.scan import sample_grid

from .dicom_validate import dciodvfy_available, validate_all
from .helpers import cohort_rows, read_series


def test_documented_tree(breast_cohort: Path) -> None:
    rows = cohort_rows(breast_cohort)
    assert len(rows) == 3
    for row in rows:
        case = breast_cohort / row["case_id"]
        assert sorted(p.name for p in case.iterdir()) == ["clinical.json", "dicom", "labels"]
        assert len(list((case / "dicom").glob("*.dcm"))) == int(row["slices"])
        for key in ("ctv", "structures", "seg"):
            assert (breast_cohort / row[key]).is_file()
        clinical = json.loads((case / "clinical.json").read_text())
        assert clinical["note"] == row["note"]


def test_counterfactual_truth_follows_the_changed_note(breast_cohort: Path) -> None:
    for row in cohort_rows(breast_cohort):
        case = breast_cohort / row["case_id"]
        cf = json.loads((case / "labels" / "counterfactual.json").read_text())
        factual = np.asarray(nib.load(breast_cohort / row["ctv"]).dataobj) > 0
        swapped = np.asarray(nib.load(case / cf["laterality"]["ctv"]).dataobj) > 0
        assert cf["laterality"]["note"] != row["note"]
        if row["laterality"] != "both":
            other = {"left": "right", "right": "left"}[row["laterality"]]
            assert (
                f"{other} side" in cf["laterality"]["note"]
                and f"{row['laterality']} side" not in cf["laterality"]["note"]
            )
            assert (factual & swapped).sum() < 0.05 * factual.sum()
        nodal = np.asarray(nib.load(case / cf["nodal"]["ctv"]).dataobj) > 0
        assert nodal.sum() != factual.sum()


@pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy (dicom3tools) not installed")
def test_every_file_passes_dciodvfy(breast_cohort: Path) -> None:
    files = sorted(breast_cohort.rglob("*.dcm"))
    assert len(files) > 50
    assert validate_all(files) == {}


def test_dicom_uids_and_geometry_are_consistent(breast_cohort: Path) -> None:
    row = cohort_rows(breast_cohort)[0]
    files = sorted((breast_cohort / row["image_dir"]).glob("*.dcm"))
    ds = [pydicom.dcmread(f) for f in files]
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID"):
        assert len({getattr(d, key) for d in ds}) == 1, key
    assert len({d.SOPInstanceUID for d in ds}) == len(ds)
    z = np.array([float(d.ImagePositionPatient[2]) for d in ds])
    assert np.allclose(np.abs(np.diff(z)), float(ds[0].SliceThickness))
    assert ds[0].RescaleIntercept == -1024 and ds[0].RescaleSlope == 1
    seg = pydicom.dcmread(breast_cohort / row["seg"])
    assert seg.FrameOfReferenceUID == ds[0].FrameOfReferenceUID
    refs = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs <= {d.SOPInstanceUID for d in ds}


def test_nifti_labels_sit_exactly_on_the_ct(breast_cohort: Path) -> None:
    for row in cohort_rows(breast_cohort):
        ct = read_series(breast_cohort / row["image_dir"])
        labels = sitk.Resample(
            sitk.ReadImage(str(breast_cohort / row["structures"])), ct, sitk.Transform(), sitk.sitkNearestNeighbor
        )
        lab = sitk.GetArrayFromImage(labels)
        hu = sitk.GetArrayFromImage(ct)
        legend = {
            v: int(k)
            for k, v in json.loads((breast_cohort / row["structures"].replace(".nii.gz", ".json")).read_text()).items()
        }
        body = (lab > 0) & (lab != legend["lung_left"]) & (lab != legend["lung_right"])
        dense = hu > -500
        dice = 2 * (body & dense).sum() / (body.sum() + dense.sum())
        assert dice > 0.97, (row["case_id"], row["patient_position"], dice)
        # The heart sits on the patient's left (+x in LPS) in the CT's own geometry.
        heart = np.argwhere(lab == legend["heart"])[:, ::-1]
        x = [ct.TransformContinuousIndexToPhysicalPoint(p.tolist())[0] for p in heart[:: max(len(heart) // 200, 1)]]
        assert np.mean(x) > 5.0, (row["case_id"], row["patient_position"])


def test_same_seed_same_pixels(breast_cohort: Path, tmp_path: Path) -> None:
    again = generate_cohort("breast", tmp_path / "again", cases=1, seed=3, size="small", progress=False)
    first = cohort_rows(breast_cohort)[0]
    a = sorted((breast_cohort / first["image_dir"]).glob("*.dcm"))
    b = sorted((again / first["image_dir"]).glob("*.dcm"))
    assert len(a) == len(b)
    for fa, fb in zip(a, b, strict=True):
        assert pydicom.dcmread(fa).PixelData == pydicom.dcmread(fb).PixelData
    assert np.array_equal(
        np.asarray(nib.load(breast_cohort / first["ctv"]).dataobj), np.asarray(nib.load(again / first["ctv"]).dataobj)
    )


def _case(surgery: str, n_stage: str, side: str = "left", seed: int = 5):
    rng = np.random.default_rng(seed)
    record = B.BreastRecord("X", 55, (B.SideRecord(side, surgery, n_stage, "T2"),), "None", False, False)
    anatomy = B.sample_anatomy(record, rng)
    grid = Grid.centred((40, 96, 96), (7.5, 4.5, 4.5), (0.0, 0.0, -85.0))
    return record, anatomy, grid


def _centroid_x(mask: np.ndarray, grid: Grid) -> float:
    idx = np.argwhere(mask)
    return float(grid.to_world(idx)[:, 0].mean())


@pytest.mark.parametrize("surgery", ["BCS", "TM"])
def test_flipping_note_laterality_moves_ctv_to_other_side(surgery: str) -> None:
    record, anatomy, grid = _case(surgery, "N2")
    left = B.ctv_mask(anatomy, record, grid)
    right = B.ctv_mask(anatomy, record.with_laterality_swapped(), grid)
    assert B.clinical_note(record.with_laterality_swapped()) == B.clinical_note(record).replace("left", "right")
    assert _centroid_x(left, grid) > 30 and _centroid_x(right, grid) < -30  # LPS: +x is patient left
    assert (left & right).sum() < 0.05 * left.sum()


def test_nodal_status_and_surgery_change_the_target_not_the_image() -> None:
    n0, anatomy, grid = _case("BCS", "N0")
    n1 = B.BreastRecord("X", 55, (B.SideRecord("left", "BCS", "N1", "T2"),), "None", False, False)
    n1mi = B.BreastRecord("X", 55, (B.SideRecord("left", "BCS", "N1mi", "T2"),), "None", False, False)
    base = B.ctv_mask(anatomy, n0, grid)
    assert B.ctv_mask(anatomy, n1, grid).sum() > 1.3 * base.sum()  # RNI added
    assert np.array_equal(B.ctv_mask(anatomy, n1mi, grid), base)  # micrometastasis: no RNI
    # Nodal status is invisible: the same anatomy renders the same structures either way.
    assert B.sample_anatomy(n1, np.random.default_rng(5)).regions.keys() == anatomy.regions.keys()
    tm = B.BreastRecord("X", 55, (B.SideRecord("left", "TM", "N0", "T2"),), "None", False, False)
    tm_anatomy = B.sample_anatomy(tm, np.random.default_rng(5))
    masks_bcs, masks_tm = B.structure_masks(anatomy, grid), B.structure_masks(tm_anatomy, grid)
    assert masks_bcs["breast_left"].any() and not masks_tm["breast_left"].any()  # mastectomy is visible


def test_bilateral_note_and_target() -> None:
    rec = B.BreastRecord(
        "X",
        42,
        (B.SideRecord("left", "BCS", "N0", "T1"), B.SideRecord("right", "BCS", "N0", "Tis")),
        "None",
        False,
        False,
    )
    assert B.clinical_note(rec) == "N0, breast conserving surgery, left side; N0, breast conserving surgery, right side"
    anatomy = B.sample_anatomy(rec, np.random.default_rng(1))
    grid = Grid.centred((40, 96, 96), (7.5, 4.5, 4.5), (0.0, 0.0, -85.0))
    ctv = B.ctv_mask(anatomy, rec, grid)
    x = grid.to_world(np.argwhere(ctv))[:, 0]
    assert (x > 30).sum() > 0.3 * len(x) and (x < -30).sum() > 0.3 * len(x)


def test_table5_note_format() -> None:
    rec = B.BreastRecord("X", 61, (B.SideRecord("left", "BCS", "N1mi", "T2"),), "Adjuvant", False, False)
    assert B.clinical_note(rec) == "N1mi, breast conserving surgery, left side"
    rec = B.BreastRecord("X", 73, (B.SideRecord("left", "TM", "N2", "T4"),), "Neoadjuvant", False, False)
    assert B.clinical_note(rec) == "N2, total mastectomy surgery, left side"
    assert B.clinical_note(rec, with_t_stage=True) == "N2, cT4, total mastectomy surgery, left side"


def test_sites_differ_in_class_mix_like_table6() -> None:
    mix = {}
    for site in ("internal", "external"):
        rng = np.random.default_rng(0)
        recs = [B.sample_record(f"c{i}", B.SITES[site], rng) for i in range(3000)]
        sides = [s for r in recs for s in r.sides]
        mix[site] = Counter(s.target for s in sides)
        n = len(sides)
        mix[site] = {k: v / n for k, v in mix[site].items()}
        bcs = sum(v for k, v in mix[site].items() if k.startswith("Breast"))
        n0 = sum(1 for s in sides if s.n_stage in ("N0", "N1mi")) / n
        both = sum(r.laterality == "both" for r in recs) / len(recs)
        left = sum(r.laterality == "left" for r in recs) / len(recs)
        assert 0.45 < left < 0.56  # Table 6: left about half, right slightly less
        if site == "internal":
            assert 0.60 < bcs < 0.71 and 0.02 < both < 0.06
        else:
            assert bcs > 0.85 and both == 0.0
        mix[site]["n0"] = n0
    assert mix["external"]["n0"] > mix["internal"]["n0"] + 0.15
    assert B.SITES["external"].noise_hu > B.SITES["internal"].noise_hu
    assert B.SITES["external"].hu_offset != B.SITES["internal"].hu_offset
    assert set(B.SITES["external"].slice_thickness).isdisjoint(B.SITES["internal"].slice_thickness)


def test_weak_image_cues_only_in_some_bcs_cases() -> None:
    rng = np.random.default_rng(0)
    recs = [B.sample_record(f"c{i}", B.SITES["internal"], rng) for i in range(2000)]
    bcs = [r for r in recs if any(s.surgery == "BCS" for s in r.sides)]
    tm_only = [r for r in recs if all(s.surgery == "TM" for s in r.sides)]
    cue = np.mean([r.seroma or r.clips for r in bcs])
    assert 0.4 < cue < 0.8
    assert not any(r.seroma or r.clips for r in tm_only)


def test_full_size_grids_are_clinical() -> None:
    rng = np.random.default_rng(0)
    grids = [sample_grid(rng, 420.0, 60.0, -230.0, (1.25, 2.5, 5.0)) for _ in range(200)]
    assert all(0.6 <= g.row_spacing <= 1.0 for g in grids)
    assert {g.slice_spacing for g in grids} == {1.25, 2.5, 5.0}
    assert {g.patient_position for g in grids} == {"HFS", "FFS"}
    assert len({g.rows for g in grids}) > 1
