"""Real studies from a PACS (issue 31): every series layout and transfer syntax a hospital sends is planned
on the right series, or refused with one line; never a traceback. The conformance matrix of CTV contouring
(tests/pacs_matrix.py; TACE planning's: tests/test_pacs_liver.py) and the rules around it."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from oncoplan.apps.ctv_contouring.app import CTVContouringApp
from oncoplan.apps.runner import run_app
from oncoplan.errors import InputError
from oncoplan.operators.input_check import check_input_folder
from oncoplan.rtstruct import sort_slices
from oncoplan.training.synth.cohort import generate_cohort
from oncoplan.training.synth.pacs import EXTRAS, cd_layout, transcode, write_pacs_series

from .dicom_validate import dciodvfy_available, problems
from .helpers import cohort_rows
from .pacs_matrix import make_variant, syntax_of, variant_params

pytestmark = pytest.mark.integration

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "ctv_llmseg"
NOTE = "N1, breast conserving surgery, left side"
UID = re.compile(r"\b\d+(\.\d+){4,}\b")  # a DICOM UID in a line
needs_dcmtk = pytest.mark.skipif(shutil.which("dcmcjpeg") is None, reason="dcmtk not installed")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cohort = generate_cohort("breast", tmp_path_factory.mktemp("pacs") / "c", 1, seed=41, size="small", progress=False)
    return cohort / cohort_rows(cohort)[0]["image_dir"]


def _contour(folder: Path, out: Path, **kwargs) -> Path:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ONCOPLAN_BACKENDS", "torch")
        run_app(CTVContouringApp, folder, out, BUNDLE, note=NOTE, **kwargs)
    return out


@pytest.fixture(scope="module")
def plain(study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert syntax_of(study) == {pydicom.uid.ExplicitVRLittleEndian}  # the matrix's Explicit VR Little Endian
    return _contour(study, tmp_path_factory.mktemp("plain") / "out")


def _seg_mask(seg: Path, ct: list[pydicom.Dataset]) -> np.ndarray:
    return (
        hd.seg.segread(seg)
        .get_pixels_by_source_instance(
            source_sop_instance_uids=[ds.SOPInstanceUID for ds in sort_slices(ct)],
            segment_numbers=[1],
            ignore_spatial_locations=True,
            assert_missing_frames_are_empty=True,
        )[..., 0]
        .astype(bool)
    )


def _same_ctv(out: Path, plain: Path, study: Path) -> None:
    """The SEG equals the plain study's (Dice >= 0.999) and every output is dciodvfy-clean."""
    ct = [pydicom.dcmread(p) for p in sorted(study.glob("*.dcm"))]
    a, b = _seg_mask(out / "ctv_seg.dcm", ct), _seg_mask(plain / "ctv_seg.dcm", ct)
    assert a.sum() > 0 and 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.999
    if dciodvfy_available():
        for p in out.glob("*.dcm"):  # ctv_note.json beside them is not DICOM
            assert problems(p) == [], p.name


def _pacs_copy(study: Path, folder: Path, extras=EXTRAS) -> Path:
    shutil.copytree(study, folder)
    write_pacs_series(sorted(folder.glob("*.dcm")), folder, extras)
    return folder


@pytest.mark.parametrize("variant", variant_params())
def test_every_variant_of_the_study_is_contoured_as_the_plain_one(
    variant: str, study: Path, plain: Path, tmp_path: Path
) -> None:
    """Issue 31's matrix for CTV contouring: layouts (CD export; an older diagnostic study of the patient in the
    folder; viewer leftovers), transfer syntaxes (Implicit VR Little Endian, JPEG Lossless SV1, JPEG Lossless,
    JPEG-LS, RLE, JPEG 2000) and extra series (topogram, 2x-thick reconstruction, coronal MPR, dose screen, dose
    SR): the planning series is chosen, by the input check and the graph's selector, and contoured as plain."""

    def several_studies(dest: Path) -> Path:  # the planning study and an older diagnostic CT of the patient
        shutil.copytree(study, dest / "planning")
        _another_study(study, dest / "diagnostic", "20000101", "080000")
        return dest

    folder = make_variant(variant, study, study, tmp_path / "in", several_studies)
    if variant.startswith("syntax:") and variant != "syntax:implicit-little-endian":
        assert all(pydicom.uid.UID(s).is_compressed for s in syntax_of(folder))
    want = pydicom.dcmread(next(study.glob("*.dcm"))).SeriesInstanceUID
    assert check_input_folder(folder, "breast").series.uid == want == _selector_choice(folder)
    _same_ctv(_contour(folder, tmp_path / "out"), plain, study)


@needs_dcmtk
def test_an_undecodable_transfer_syntax_is_one_line_naming_the_file_exit_2_nothing_written(
    study: Path, tmp_path: Path
) -> None:
    """HTJ2K (no installed decoder reads it): refused before the graph, not a traceback inside it."""
    folder = shutil.copytree(study, tmp_path / "htj2k")
    transcode(sorted(folder.glob("*.dcm")), "jpeg-ls")
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"  # HTJ2K Lossless
        ds.save_as(path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "oncoplan", "contour", "-i", str(folder), "-o", str(out), "--note", NOTE]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("oncoplan: error:") and "cannot decode" in last and "High-Throughput JPEG 2000" in last
    assert ".dcm" in last
    assert not out.exists() or list(out.iterdir()) == []


REASONS = {
    "topogram": "localizer",
    "thick_recon": None,  # a candidate: the thinner planning series wins on rule 3
    "coronal_mpr": "derived or secondary",
    "dose_screen": "not a CT image",
    "dose_sr": "SR object",
}


@pytest.mark.parametrize("extra", EXTRAS)
def test_each_extra_series_kind_is_passed_over(extra: str, study: Path, tmp_path: Path, caplog) -> None:
    folder = _pacs_copy(study, tmp_path / extra, [extra])
    choice = check_input_folder(folder, "breast")
    assert choice.series.uid == pydicom.dcmread(next(study.glob("*.dcm"))).SeriesInstanceUID
    if REASONS[extra]:
        ((_, reason),) = choice.passed
        assert reason.startswith(REASONS[extra]), reason
    else:
        assert not choice.passed and choice.why == "thinnest slices of 2 candidates"
    caplog.clear()
    with caplog.at_level("INFO"):
        choice.log()
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("oncoplan")]
    assert logged[0].startswith("CT series chosen: series 2")
    assert not [m for m in logged if UID.search(m)], "log lines carry no UID"


def test_a_pacs_study_laid_out_as_a_cd_is_contoured_on_its_planning_series(
    study: Path, plain: Path, tmp_path: Path
) -> None:
    """Topogram, 2x-thick reconstruction, coronal MPR, dose screen and dose SR, as a CD export (DICOMDIR,
    nested folders, files without extension, Thumbs.db, .DS_Store, a viewer executable)."""
    cd = cd_layout(_pacs_copy(study, tmp_path / "pacs"), tmp_path / "cd")
    assert (cd / "DICOMDIR").is_file() and not list(cd.rglob("*.dcm"))
    _same_ctv(_contour(cd, tmp_path / "out"), plain, study)


def test_series_the_rules_cannot_tell_apart_are_refused_with_how_to_pick_one(study: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(study, tmp_path / "twice")
    for f in sorted(study.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SeriesNumber = "1.2.3.4.5", 7
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(folder / f"other_{f.name}")
    with pytest.raises(InputError, match="cannot tell apart") as err:
        check_input_folder(folder, "breast")
    assert "\n" not in str(err.value) and "--series" in str(err.value) and "series 7" in str(err.value)
    assert check_input_folder(folder, "breast", "7").series.uid == "1.2.3.4.5"
    with pytest.MonkeyPatch.context() as env:  # MAP runs: the environment
        env.setenv("ONCOPLAN_SERIES", "1.2.3.4.5")
        assert check_input_folder(folder, "breast").series.number == 7
    with pytest.raises(InputError, match="--series 77: no such series"):
        check_input_folder(folder, "breast", "77")


def test_the_cli_series_flag_picks_another_reconstruction(study: Path, tmp_path: Path) -> None:
    folder = _pacs_copy(study, tmp_path / "pacs", ["thick_recon", "topogram"])
    assert check_input_folder(folder, "breast").series.description == "RT SIM CHEST 3D"
    assert check_input_folder(folder, "breast", "102").series.description.endswith("mm")
    with pytest.raises(InputError, match=r"--series 1: .*localizer"):
        check_input_folder(folder, "breast", "1")
    for command in ("contour", "plan"):
        r = subprocess.run(
            [sys.executable, "-m", "oncoplan", command, "--help"], capture_output=True, text=True, check=False
        )
        assert "--series UID|NUMBER" in r.stdout


@needs_dcmtk
def test_synth_pacs_writes_pacs_shaped_compressed_studies(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    cmd = [sys.executable, "-m", "oncoplan", "synth", "breast", "--out", str(out), "--cases", "1", "--size", "small"]
    r = subprocess.run(
        [*cmd, "--quiet", "--pacs", "--transfer-syntax", "jpeg-lossless-sv1"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    study = out / cohort_rows(out)[0]["image_dir"]
    assert sorted(p.name for p in study.iterdir() if p.is_dir()) == sorted(EXTRAS)
    planning = pydicom.dcmread(next(study.glob("*.dcm")))
    assert planning.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    choice = check_input_folder(study, "breast")
    assert choice.series.uid == planning.SeriesInstanceUID and len(choice.passed) == 4


@pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy (dicom3tools) not installed")
def test_the_extra_series_pass_dciodvfy(study: Path, tmp_path: Path) -> None:
    folder = _pacs_copy(study, tmp_path / "pacs")
    for name in EXTRAS:
        found = problems(sorted((folder / name).iterdir())[0])
        if name == "coronal_mpr":  # GE's REFORMATTED is no defined term of CT ImageType value 3
            found = [p for p in found if "REFORMATTED" not in p]
        assert found == [], name


def _synth_cli(out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "oncoplan", "synth", "breast", "--out", str(out), "--cases", "1", "--size", "small"]
    return subprocess.run([*cmd, "--quiet", *extra], capture_output=True, text=True, env=env, check=False)


def _one_line_nothing_written(r: subprocess.CompletedProcess, out: Path, *words: str) -> None:
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("oncoplan: error:"), r.stderr[-3000:]
    assert all(w in lines[0] for w in words), lines[0]
    assert not out.exists() and list(out.parent.iterdir()) == [], "nothing half-written, no scratch folder left"


def test_synth_pacs_that_fails_part_way_leaves_no_cohort_one_line_exit_2(tmp_path: Path) -> None:
    """The PACS shaping runs on the scratch cohort: an encoder failing on the first image (after the cohort and
    its extra series are written) leaves no cohort; so do a missing encoder and an unknown syntax."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "dcmcjpeg").write_text("#!/bin/sh\necho 'E: simulated encoder failure' >&2\nexit 1\n")
    (fake / "dcmcjpeg").chmod(0o755)
    (tmp_path / "run").mkdir()
    env = {**os.environ, "PATH": f"{fake}:{os.environ.get('PATH', '')}"}
    out = tmp_path / "run" / "cohort"
    r = _synth_cli(out, "--pacs", "--transfer-syntax", "jpeg-lossless-sv1", env=env)
    _one_line_nothing_written(r, out, "dcmcjpeg", "simulated encoder failure", ".dcm")
    r = _synth_cli(out, "--pacs", "--transfer-syntax", "jpeg-ls", env={**os.environ, "PATH": str(fake)})
    _one_line_nothing_written(r, out, "dcmcjpls", "jpeg-ls")
    r = _synth_cli(out, "--pacs", "--transfer-syntax", "htj2k")
    _one_line_nothing_written(r, out, "unknown --transfer-syntax", "jpeg2000")


def test_transfer_syntax_jpeg2000_is_lossless_jpeg_2000_with_every_other_attribute_kept(
    study: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(study, tmp_path / "j2k")
    transcode(sorted(folder.glob("*.dcm")), "jpeg2000")
    for path in sorted(study.glob("*.dcm"))[:3]:
        a, b = pydicom.dcmread(path), pydicom.dcmread(folder / path.name)
        assert b.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
        assert np.array_equal(a.pixel_array, b.pixel_array)
        assert {e.tag: e.value for e in a if e.keyword != "PixelData"} == {
            e.tag: e.value for e in b if e.keyword != "PixelData"
        }
        if dciodvfy_available():
            assert problems(folder / path.name) == [], path.name


def _corrupt_frame(path: Path) -> None:
    """Cut the compressed image of one slice to a third (a transfer broken off, a bad disk)."""
    from pydicom.encaps import encapsulate, get_frame

    ds = pydicom.dcmread(path)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    ds.save_as(path)


@needs_dcmtk
def test_a_corrupt_middle_slice_is_one_line_naming_it_exit_2_nothing_written(study: Path, tmp_path: Path) -> None:
    """Every slice of the chosen series is decoded by the input check, not only the first: a corrupt slice in
    the middle is refused before the graph, never a traceback inside the SDK's volume operator."""
    folder = shutil.copytree(study, tmp_path / "corrupt")
    files = sorted(folder.glob("*.dcm"))
    transcode(files, "jpeg-lossless-sv1")
    middle = files[len(files) // 2]
    _corrupt_frame(middle)
    with pytest.raises(InputError, match=re.escape(str(middle)) + ": cannot decode") as err:
        check_input_folder(folder, "breast")
    assert "\n" not in str(err.value)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "oncoplan", "contour", "-i", str(folder), "-o", str(out), "--note", NOTE]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("oncoplan: error:") and middle.name in last and "cannot decode" in last, last
    assert "JPEG Lossless" in last
    assert [line for line in r.stderr.splitlines() if "Corrupt JPEG" in line] in ([], [last]), "the decoder's own words"
    assert not out.exists() or list(out.iterdir()) == []


def _another_study(study: Path, folder: Path, date: str, time: str, number: int = 7) -> Path:
    """The study's CT again as another study of the same patient (e.g. an older diagnostic CT)."""
    folder.mkdir(parents=True)
    study_uid, series_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for f in sorted(study.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = study_uid, series_uid, number
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.StudyDate, ds.StudyTime, ds.StudyDescription = date, time, "CT CHEST DIAGNOSTIC"
        ds.save_as(folder / f.name)
    return folder


def _selector_choice(folder: Path) -> str:
    """The series the apps' selector (inside the graph) emits for the folder."""
    from types import SimpleNamespace

    from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator

    from oncoplan.operators.series_selector import RuleSeriesSelectorOperator

    loader = DICOMDataLoaderOperator.__new__(DICOMDataLoaderOperator)  # the SDK's loading, without a graph
    loader._must_load, loader._logger = True, logging.getLogger("test")
    studies = loader.load_data_to_studies(folder)
    (selected,) = RuleSeriesSelectorOperator.filter(SimpleNamespace(organ="breast", series=None), None, studies)
    return str(selected.selected_series[0].series.SeriesInstanceUID)


def test_several_breast_studies_of_the_patient_the_most_recent_with_a_candidate_is_contoured(
    study: Path, tmp_path: Path
) -> None:
    planning = pydicom.dcmread(next(study.glob("*.dcm")))
    folder = tmp_path / "studies"
    shutil.copytree(study, folder / "planning")
    older = _another_study(study, folder / "diagnostic", "20000101", "080000")
    choice = check_input_folder(folder, "breast")
    assert choice.series.uid == planning.SeriesInstanceUID == _selector_choice(folder)
    assert choice.why.endswith("in the most recent of 2 studies with a candidate series"), choice.why
    assert [(s.number, r.split(" (")[0]) for s, r in choice.passed] == [(7, "an earlier study")]
    # A later study wins, whichever folder it is in.
    shutil.rmtree(older)
    _another_study(study, folder / "diagnostic", "29990101", "080000")
    assert check_input_folder(folder, "breast").series.number == 7


def test_several_breast_studies_no_date_orders_are_refused_with_how_to_pick_one(study: Path, tmp_path: Path) -> None:
    planning = pydicom.dcmread(next(study.glob("*.dcm")))
    folder = tmp_path / "studies"
    shutil.copytree(study, folder / "planning")
    _another_study(study, folder / "other", str(planning.StudyDate), str(planning.StudyTime))
    with pytest.raises(InputError, match="2 CT studies of the patient") as err:
        check_input_folder(folder, "breast")
    text = str(err.value)
    assert "\n" not in text and "--series" in text and "'CT CHEST DIAGNOSTIC': series 7" in text
    assert check_input_folder(folder, "breast", "7").series.number == 7
