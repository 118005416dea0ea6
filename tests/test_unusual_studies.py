"""Studies shaped in ways issue 31 does not list: each is handled by a stated rule, or refused before the graph
with one line naming the file or series and the problem (exit 2, nothing written, never a traceback), by both
apps. The studies are tiny (16 x 16 slices): only the input check and the series selection see them."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from oncoplan.cli import main
from oncoplan.errors import InputError
from oncoplan.operators.input_check import check_input_folder

ORGANS = {"breast": "contour", "liver": "plan"}
NOTE = "N1, breast conserving surgery, left side"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.2"


def _series(
    folder: Path,
    number: int = 2,
    slices: int = 8,
    step: float = 2.5,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    description: str = "ABD PORTAL VENOUS",
    study: str = "study",
    z: list[float] | None = None,
) -> list[Path]:
    """One small axial CT series of one patient (a portal-venous description, so both apps can use it)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid(entropy_srcs=[study, str(number)])
    pixels = np.random.default_rng(number).integers(0, 1200, (slices, 16, 16), dtype=np.uint16)
    paths = []
    for k, position in enumerate(z if z is not None else [step * k for k in range(slices)]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID = CTImageStorage, ExplicitVRLittleEndian
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[study, str(number), str(k)])
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study]), series_uid
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study, "for"])
        ds.PatientName, ds.PatientID, ds.Modality = "Doe^Jane", "P00001", "CT"
        ds.StudyDate, ds.StudyTime, ds.AcquisitionTime = "20260101", "120000", "120100"
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = description, number, k + 1
        ds.ImageType = list(image_type)
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, float(position)], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], step
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = pixels[k % slices].tobytes()
        path = folder / f"IM{number:03d}_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _selector_choice(folder: Path, organ: str) -> int:
    """The SeriesNumber the apps' selector (inside the graph, after the SDK's loader) emits for the folder."""
    from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator

    from oncoplan.operators.series_selector import RuleSeriesSelectorOperator

    loader = DICOMDataLoaderOperator.__new__(DICOMDataLoaderOperator)  # the SDK's loading, without a graph
    loader._must_load, loader._logger = True, logging.getLogger("test")
    studies = loader.load_data_to_studies(folder)
    (selected,) = RuleSeriesSelectorOperator.filter(SimpleNamespace(organ=organ, series=None), None, studies)
    return int(selected.selected_series[0].series.get_sop_instances()[0].get_native_sop_instance().SeriesNumber)


def _refused(folder: Path, tmp_path: Path, capsys, *words: str) -> None:
    """Both apps, through the CLI: exit 2, one error line on stderr holding `words`, nothing written."""
    for organ, command in ORGANS.items():
        with pytest.raises(InputError) as err:
            check_input_folder(folder, organ)
        assert "\n" not in str(err.value) and all(w in str(err.value) for w in words), (organ, str(err.value))
        out = tmp_path / f"out_{command}"
        capsys.readouterr()
        extra = ["--note", NOTE] if command == "contour" else []
        assert main([command, "-i", str(folder), "-o", str(out), *extra]) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()  # log lines may come first (the CLI's progress line): one error line, last
        assert "Traceback" not in err and [ln for ln in lines if ln.startswith("oncoplan: error:")] == lines[-1:], err
        assert all(w in lines[-1] for w in words), lines[-1]
        assert not out.exists() or list(out.iterdir()) == []


def _chosen(folder: Path, number: int) -> None:
    """Both apps' input check and in-graph selector choose series `number`."""
    for organ in ORGANS:
        assert check_input_folder(folder, organ).series.number == number, organ
        assert _selector_choice(folder, organ) == number, organ


# Enhanced CT -----------------------------------------------------------------------------------------------


def _multi_frame(files: list[Path], out: Path, sop_class: str, number: int = 5) -> Path:
    """The series as one multi-frame file of `sop_class` (only what the rules read is filled in)."""
    slices = [pydicom.dcmread(f) for f in files]
    ds = slices[0].copy()
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = generate_uid(), number, "ENHANCED PORTAL VENOUS"
    ds.NumberOfFrames = len(slices)
    ds.PixelData = b"".join(s.PixelData for s in slices)
    out.mkdir(parents=True, exist_ok=True)
    ds.save_as(out / "ENHANCED.dcm", enforce_file_format=True)
    return out / "ENHANCED.dcm"


@pytest.mark.parametrize("sop_class", [ENHANCED_CT, LEGACY_ENHANCED_CT], ids=["enhanced", "legacy_converted"])
def test_an_enhanced_ct_study_is_refused_with_how_to_convert_it(
    sop_class: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    files = _series(tmp_path / "src")
    _multi_frame(files, tmp_path / "in", sop_class)
    _refused(tmp_path / "in", tmp_path, capsys, "series 5 'ENHANCED PORTAL VENOUS' (1 image of 8 frames)", "emf2sf")


def test_an_enhanced_ct_beside_a_single_frame_series_is_passed_over(tmp_path: Path) -> None:
    files = _series(tmp_path / "in" / "axial")
    _multi_frame(files, tmp_path / "in" / "enhanced", ENHANCED_CT)
    _chosen(tmp_path / "in", 2)
    (passed,) = check_input_folder(tmp_path / "in", "breast").passed
    assert passed[1].startswith("multi-frame Enhanced CT"), passed


# DERIVED\SECONDARY ----------------------------------------------------------------------------------------


def test_a_derived_secondary_axial_series_alone_is_refused_and_can_be_named(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Rule 2 passes over derived series (an axial MPR or MIP looks like this); alone, one line says how to use
    it anyway, and --series NUMBER does."""
    _series(tmp_path / "in", number=4, image_type=("DERIVED", "SECONDARY", "AXIAL"))
    _refused(tmp_path / "in", tmp_path, capsys, "series 4", "derived or secondary", "--series")
    for organ in ORGANS:
        assert check_input_folder(tmp_path / "in", organ, "4").series.number == 4


def test_a_derived_secondary_axial_series_beside_the_original_is_passed_over(tmp_path: Path) -> None:
    _series(tmp_path / "in" / "a", number=2)
    _series(tmp_path / "in" / "b", number=4, step=1.25, image_type=("DERIVED", "SECONDARY", "AXIAL"))
    _chosen(tmp_path / "in", 2)  # though the derived one is thinner


# Geometry: gaps, thicknesses, orientations, duplicates ------------------------------------------------------


def test_a_series_with_a_missing_slice_is_refused_naming_the_gap(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files = _series(tmp_path / "in")
    files[3].unlink()
    _refused(tmp_path / "in", tmp_path, capsys, "series 2", "inconsistent slice spacing (2.50-5.00 mm", "1 slice")


def test_a_series_with_a_missing_slice_beside_a_complete_one_is_passed_over(tmp_path: Path) -> None:
    files = _series(tmp_path / "in" / "thin", number=2, slices=16, step=1.25)
    files[5].unlink()
    _series(tmp_path / "in" / "thick", number=3)
    _chosen(tmp_path / "in", 3)
    passed = dict((s.number, r) for s, r in check_input_folder(tmp_path / "in", "breast").passed)
    assert passed[2].startswith("incomplete: inconsistent slice spacing"), passed


def test_slice_thickness_values_that_differ_are_no_problem_the_positions_give_the_geometry(tmp_path: Path) -> None:
    files = _series(tmp_path / "in")
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.SliceThickness = [2.5, 3.0, 5.0][k % 3]
        ds.save_as(path)
    _chosen(tmp_path / "in", 2)


def test_a_series_of_two_slice_spacings_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A variable-pitch series (2.5 mm slices, then 3.75 mm): no even grid for the models."""
    _series(tmp_path / "in", z=[0, 2.5, 5, 7.5, 11.25, 15, 18.75])
    _refused(tmp_path / "in", tmp_path, capsys, "series 2", "inconsistent slice spacing (2.50-3.75 mm)")


def test_a_series_whose_slices_have_different_orientations_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    files = _series(tmp_path / "in")
    ds = pydicom.dcmread(files[4])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9848078, -0.1736482]  # tilted 10 degrees
    ds.save_as(files[4])
    _refused(tmp_path / "in", tmp_path, capsys, "series 2", "different orientations (1 of 8 unlike the first)")


def test_duplicate_slices_are_refused_naming_both_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The same file twice, or another instance at a slice's position, in a series the rules would otherwise
    consider: refused, even beside another complete series (the SDK's loader would keep one slice per position,
    so passing the series over would part the input check from the graph's selector)."""
    files = _series(tmp_path / "copy")
    shutil.copy(files[3], tmp_path / "copy" / "IM002_003 (1).dcm")
    _refused(tmp_path / "copy", tmp_path, capsys, "IM002_003.dcm", "IM002_003 (1).dcm", "the same instance twice")
    files = _series(tmp_path / "other" / "thin", slices=16, step=1.25)
    _series(tmp_path / "other" / "thick", number=3)
    ds = pydicom.dcmread(files[6])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "other" / "thin" / "resent.dcm")
    _refused(tmp_path / "other", tmp_path, capsys, "IM002_006.dcm", "resent.dcm", "at one position")
    with pytest.raises(InputError) as err:
        check_input_folder(tmp_path / "other")
    assert "same instance" not in str(err.value)
    assert check_input_folder(tmp_path / "other", "breast", "3").series.number == 3  # a named series is worked on


# Broken files ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", ["explicit-little-endian", "jpeg-ls"])
def test_a_file_cut_inside_its_pixel_data_is_refused_naming_it(
    syntax: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    files = _series(tmp_path / "in")
    if syntax != "explicit-little-endian":
        if shutil.which("dcmcjpls") is None:
            pytest.skip("dcmtk not installed")
        from oncoplan.training.synth.pacs import transcode

        transcode(files, syntax)
    data = files[4].read_bytes()
    files[4].write_bytes(data[: len(data) - 100])  # the last 100 bytes of the pixel data element missing
    _refused(tmp_path / "in", tmp_path, capsys, str(files[4]), "truncated")


@pytest.mark.parametrize(
    "attribute", ["Rows", "BitsAllocated", "SeriesInstanceUID", "StudyInstanceUID", "SOPInstanceUID"]
)
def test_a_file_without_an_attribute_the_slice_needs_is_refused_naming_it(
    attribute: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Not a traceback, and not a slice the SDK's loader would silently leave out of the series."""
    files = _series(tmp_path / "in")
    ds = pydicom.dcmread(files[3])
    delattr(ds, attribute)
    ds.save_as(files[3])
    _refused(tmp_path / "in", tmp_path, capsys, str(files[3]), attribute)


def _without_file_header(path: Path, preamble: bool = False) -> None:
    """Re-write a file as its bare data set (Implicit VR Little Endian, as ACR-NEMA-era tools write it):
    no preamble, no 'DICM', no file meta information; or, with `preamble`, the preamble and 'DICM' only."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = pydicom.dcmread(path, force=True)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    path.write_bytes((b"\0" * 128 + b"DICM" if preamble else b"") + buffer.getvalue())


def test_a_dicom_data_set_without_its_file_header_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Not skipped as 'not DICOM' (the series would lose slices, or the folder hold 'no DICOM'): one line that
    says what it is and how to re-write it."""
    files = _series(tmp_path / "in")
    _without_file_header(files[2])
    assert pydicom.dcmread(files[2], force=True).SOPInstanceUID  # it is DICOM, without the header
    _refused(tmp_path / "in", tmp_path, capsys, str(files[2]), "without the DICOM file header", "dcmconv")
    for path in files:  # every file so
        _without_file_header(path)
    _refused(tmp_path / "in", tmp_path, capsys, str(files[0]), "without the DICOM file header")


def test_a_file_with_a_preamble_but_no_file_meta_information_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    files = _series(tmp_path / "in")
    _without_file_header(files[2], preamble=True)
    _refused(tmp_path / "in", tmp_path, capsys, str(files[2]), "no transfer syntax", "dcmconv")


def test_implicit_vr_files_are_read_like_explicit_ones(tmp_path: Path) -> None:
    files = _series(tmp_path / "in")
    for path in files[::2]:  # a series of both encodings, as a PACS may store one
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    _chosen(tmp_path / "in", 2)


@pytest.mark.skipif(shutil.which("dcmconv") is None, reason="dcmtk not installed")
def test_a_series_in_explicit_vr_big_endian_is_read(tmp_path: Path) -> None:
    """The retired big-endian syntax some old archives still send: read by the input check (every slice decoded)
    and the SDK's loader alike."""
    import subprocess

    for path in _series(tmp_path / "in"):
        subprocess.run(["dcmconv", "+tb", str(path), str(path)], check=True, capture_output=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2"
    _chosen(tmp_path / "in", 2)
