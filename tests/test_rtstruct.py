"""RTSTRUCT writer/reader: exact round trip for any patient position, holes, validity, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from oncoplan.errors import InputError
from oncoplan.rtstruct import ROI, read_rtstruct, rtstruct_dataset, slice_contours, sort_slices, write_rtstruct
from oncoplan.training.synth.dicom_ct import Patient, Series, Study, ct_datasets
from oncoplan.training.synth.geometry import Grid

from .dicom_validate import dciodvfy_available, problems


def _series(position: str, spacing: tuple[float, float, float], shape=(12, 40, 36)) -> tuple[Grid, list]:
    grid = Grid.centred(shape, spacing, (10.0, -20.0, 35.0), position)
    hu = np.full(grid.shape, -1000, dtype=np.int16)
    patient = Patient("RT001", "TEST^RTSTRUCT", "19600101", "F", 60)
    study = Study(pydicom.uid.generate_uid(), "20240101", "101010", "A1", "1", "RT test")
    series = Series(pydicom.uid.generate_uid(), 3, "CT", pydicom.uid.generate_uid(), "CHEST")
    return grid, ct_datasets(hu, grid, patient, study, series)


def _ball(grid: Grid, centre: np.ndarray, radius: float, hole: float = 0.0) -> np.ndarray:
    """A ball (optionally hollow) in world mm, rasterised in the grid's instance order."""
    k, r, c = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    xyz = grid.to_world(np.stack([k.ravel(), r.ravel(), c.ravel()], axis=1)).reshape(*grid.shape, 3)
    d = np.linalg.norm(xyz - centre, axis=-1)
    return (d <= radius) & (d >= hole)


def _sorted_order(ct: list) -> list[int]:
    uids = [ds.SOPInstanceUID for ds in sort_slices(ct)]
    return [next(i for i, ds in enumerate(ct) if ds.SOPInstanceUID == u) for u in uids]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.mark.parametrize(
    ("position", "spacing"),
    [("HFS", (2.5, 0.8, 1.1)), ("FFS", (3.0, 1.25, 0.7)), ("HFS", (1.0, 1.0, 1.0))],
)
def test_round_trip_is_exact_for_head_and_feet_first(tmp_path: Path, position: str, spacing) -> None:
    grid, ct = _series(position, spacing)
    centre = grid.to_world(np.array([[5.0, 18.0, 15.0]]))[0]
    hollow = _ball(grid, centre, 13.0, hole=5.0)  # a shell: every mid slice has a hole
    solid = _ball(grid, centre + np.array([0.0, 0.0, 4.0]), 6.0)
    order = _sorted_order(ct)
    rois = [ROI("CTV", hollow[order]), ROI("Boost", solid[order], (0, 255, 0), "GTV")]
    shuffled = [ct[i] for i in np.random.default_rng(0).permutation(len(ct))]
    path = write_rtstruct(rtstruct_dataset(shuffled, rois), tmp_path / "rs.dcm")
    back = read_rtstruct(path, ct)
    assert set(back) == {"CTV", "Boost"}
    assert _dice(back["CTV"], hollow[order]) >= 0.98
    assert np.array_equal(back["CTV"], hollow[order])
    assert np.array_equal(back["Boost"], solid[order])


def test_contours_sit_at_the_masks_world_position(tmp_path: Path) -> None:
    grid, ct = _series("FFS", (2.0, 0.9, 0.9))
    centre = grid.to_world(np.array([[6.0, 12.0, 25.0]]))[0]
    mask = _ball(grid, centre, 7.0)
    ds = rtstruct_dataset(ct, [ROI("CTV", mask[_sorted_order(ct)])])
    points = np.concatenate(
        [np.asarray(c.ContourData, dtype=float).reshape(-1, 3) for c in ds.ROIContourSequence[0].ContourSequence]
    )
    assert np.allclose(points.mean(axis=0)[:2], centre[:2], atol=0.5)
    z = {float(ct_ds.ImagePositionPatient[2]) for ct_ds in ct}
    assert set(np.round(points[:, 2], 2)) <= {round(v, 2) for v in z}  # every contour lies on a CT slice


def test_oblique_series_round_trips(tmp_path: Path) -> None:
    _, ct = _series("HFS", (2.0, 1.0, 1.0), shape=(8, 30, 30))
    a = np.deg2rad(25.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    for ds in ct:
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([rot @ iop[:3], rot @ iop[3:]])]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in rot @ np.asarray(ds.ImagePositionPatient, dtype=float)]
    mask = np.zeros((8, 30, 30), dtype=bool)
    mask[2:6, 5:20, 8:14] = True
    mask[3, 9:12, 10:12] = False  # a hole on one slice
    back = read_rtstruct(write_rtstruct(rtstruct_dataset(ct, [ROI("CTV", mask)]), tmp_path / "rs.dcm"), ct)
    assert np.array_equal(back["CTV"], mask)


def test_hole_gives_two_contours_on_its_slice() -> None:
    ring = np.zeros((20, 20), dtype=bool)
    ring[3:17, 3:17] = True
    ring[7:13, 7:13] = False
    contours = slice_contours(ring)
    assert len(contours) == 2
    assert all(not np.allclose(c[0], c[-1]) for c in contours)  # CLOSED_PLANAR: first point not repeated


def test_references_and_required_attributes(tmp_path: Path) -> None:
    _, ct = _series("HFS", (2.5, 1.0, 1.0))
    mask = np.zeros((12, 40, 36), dtype=bool)
    mask[4:8, 10:20, 10:20] = True
    ds = rtstruct_dataset(ct, [ROI("CTV", mask), ROI("Empty", np.zeros_like(mask), interpreted_type="ORGAN")])
    assert ds.Modality == "RTSTRUCT" and "research use only" in ds.SeriesDescription
    assert ds.StudyInstanceUID == ct[0].StudyInstanceUID and ds.PatientID == "RT001"
    assert ds.FrameOfReferenceUID == ct[0].FrameOfReferenceUID
    ref = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == ct[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in ref.ContourImageSequence} == {c.SOPInstanceUID for c in ct}
    contour_refs = {
        c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in ds.ROIContourSequence[0].ContourSequence
    }
    assert len(contour_refs) == 4
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["CTV", "ORGAN"]
    if dciodvfy_available():
        path = write_rtstruct(ds, tmp_path / "rs.dcm")
        assert problems(path) == []


@pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy (dicom3tools) not installed")
def test_written_files_pass_dciodvfy_for_feet_first(tmp_path: Path) -> None:
    grid, ct = _series("FFS", (3.0, 0.7, 0.7))
    mask = _ball(grid, grid.to_world(np.array([[6.0, 20.0, 18.0]]))[0], 8.0)
    path = write_rtstruct(rtstruct_dataset(ct, [ROI("CTV", mask[_sorted_order(ct)])]), tmp_path / "rs.dcm")
    assert problems(path) == []


@pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy (dicom3tools) not installed")
def test_a_contour_too_long_for_explicit_vr_is_written_implicit_and_exact(tmp_path: Path) -> None:
    """A square with a one-pixel tooth every other pixel on each side: one contour of ~4,200 points, whose
    ContourData is over 64 KB, more than explicit VR's 2-byte length holds (pydicom would write it as
    UN). The file goes out as Implicit VR Little Endian, valid, and reads back exact; a small contour
    stays explicit."""
    grid, ct = _series("HFS", (2.0, 0.5, 0.5), shape=(3, 560, 560))
    mask = np.zeros(grid.shape, dtype=bool)
    mask[1, 20:540, 20:540] = True
    for side in (mask[1, 19, 20:540], mask[1, 540, 20:540], mask[1, 20:540, 19], mask[1, 20:540, 540]):
        side[::2] = True
    order = _sorted_order(ct)
    ragged = rtstruct_dataset(ct, [ROI("Ragged", mask[order])])
    (contour,) = ragged.ROIContourSequence[0].ContourSequence
    assert len("\\".join(map(str, contour.ContourData))) > 0xFFFF
    path = write_rtstruct(ragged, tmp_path / "ragged.dcm")
    written = pydicom.dcmread(path)
    assert written.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    assert written.ROIContourSequence[0].ContourSequence[0]["ContourData"].VR == "DS"
    assert problems(path) == []
    assert np.array_equal(read_rtstruct(path, ct)["Ragged"], mask[order])
    small = write_rtstruct(
        rtstruct_dataset(
            ct, [ROI("Small", _ball(grid, grid.to_world(np.array([[1.0, 200.0, 200.0]]))[0], 20.0)[order])]
        ),
        tmp_path / "small.dcm",
    )
    assert pydicom.dcmread(small).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_bad_input_is_refused(tmp_path: Path) -> None:
    _, ct = _series("HFS", (2.5, 1.0, 1.0))
    with pytest.raises(ValueError, match="mask shape"):
        rtstruct_dataset(ct, [ROI("CTV", np.zeros((3, 3, 3), dtype=bool))])
    with pytest.raises(ValueError, match="unique"):
        m = np.zeros((12, 40, 36), dtype=bool)
        rtstruct_dataset(ct, [ROI("CTV", m), ROI("CTV", m)])
    with pytest.raises(ValueError, match="interpreted type"):
        ROI("CTV", np.zeros((1, 1, 1), dtype=bool), interpreted_type="TUMOUR")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(InputError, match=r"junk\.dcm"):
        read_rtstruct(junk, ct)
    mask = np.zeros((12, 40, 36), dtype=bool)
    mask[5, 5:9, 5:9] = True
    path = write_rtstruct(rtstruct_dataset(ct, [ROI("CTV", mask)]), tmp_path / "rs.dcm")
    _, other = _series("HFS", (2.5, 1.0, 1.0))  # another frame of reference
    with pytest.raises(InputError, match="frame of reference"):
        read_rtstruct(path, other)


def test_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, ct = _series("HFS", (2.5, 1.0, 1.0))
    mask = np.zeros((12, 40, 36), dtype=bool)
    mask[5, 5:9, 5:9] = True
    ds = rtstruct_dataset(ct, [ROI("CTV", mask)])

    def disk_full(self, filename, **kwargs) -> None:
        Path(filename).write_bytes(b"DICM partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_rtstruct(ds, tmp_path / "rs.dcm")
    assert list(tmp_path.iterdir()) == []
