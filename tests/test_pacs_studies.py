"""Real studies from a PACS (issue 31): every series layout and transfer syntax a hospital sends is planned
on the right series, or refused with one line; never a traceback. A conformance matrix over both apps."""

from __future__ import annotations

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
from oncoplan.training.synth.pacs import EXTRAS, TRANSFER_SYNTAXES, cd_layout, transcode, write_pacs_series

from .dicom_validate import dciodvfy_available, problems
from .helpers import cohort_rows, tiny_tace_models

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
        for p in out.iterdir():
            assert problems(p) == [], p.name


def _pacs_copy(study: Path, folder: Path, extras=EXTRAS) -> Path:
    shutil.copytree(study, folder)
    write_pacs_series(sorted(folder.glob("*.dcm")), folder, extras)
    return folder


@needs_dcmtk
@pytest.mark.parametrize("syntax", list(TRANSFER_SYNTAXES))
def test_a_compressed_study_is_contoured_as_the_plain_one(
    syntax: str, study: Path, plain: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(study, tmp_path / syntax)
    transcode(sorted(folder.glob("*.dcm")), syntax)
    assert pydicom.dcmread(next(folder.glob("*.dcm"))).file_meta.TransferSyntaxUID.is_compressed
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


@pytest.fixture(scope="module")
def liver(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cohort = generate_cohort("liver", tmp_path_factory.mktemp("pacsl") / "c", 1, seed=5, size="small", progress=False)
    row = cohort_rows(cohort)[0]
    return {"dir": cohort / row["TCIA_ID"] / "dicom", "pvp": cohort / row["pre_PVP_series"]}


@needs_dcmtk
def test_a_compressed_pacs_liver_study_is_planned_on_the_pre_treatment_pvp_series(liver: dict, tmp_path: Path) -> None:
    """Pre and post studies in one folder, a topogram and a thick reconstruction of the PVP series, a dose SR,
    all in JPEG Lossless SV1, as a CD export: the pre-treatment PVP series (thin) is planned."""
    folder = shutil.copytree(liver["dir"], tmp_path / "study")
    pvp = folder / liver["pvp"].relative_to(liver["dir"])
    write_pacs_series(sorted(pvp.glob("*.dcm")), pvp.parent, ["topogram", "thick_recon", "dose_sr"])
    transcode([p for p in folder.rglob("*.dcm") if pydicom.dcmread(p).Modality == "CT"], "jpeg-lossless-sv1")
    cd = cd_layout(folder, tmp_path / "cd")
    want = pydicom.dcmread(next(pvp.glob("*.dcm"))).SeriesInstanceUID
    choice = check_input_folder(cd, "liver")
    assert (choice.series.uid, choice.phase) == (want, "PVP"), choice.why
    models = tiny_tace_models(tmp_path / "models")
    out = tmp_path / "out"
    settings = '{"beam": 2, "samples": 1, "steps": 2}'
    cmd = [sys.executable, "-m", "oncoplan", "plan", "-i", str(cd), "-o", str(out), "-m", str(models)]
    r = subprocess.run(
        [*cmd, "--settings", settings],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=400,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert "CT series chosen: series" in r.stderr and "PVP phase" in r.stderr
    seg = pydicom.dcmread(out / "tace_post_seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == want
    if dciodvfy_available():
        for p in out.glob("*.dcm"):
            assert problems(p) == [], p.name


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
