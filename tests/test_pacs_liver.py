"""Issue 31's conformance matrix for TACE planning (`oncoplan plan`): every layout, transfer syntax and extra
series kind of a liver study is planned on the pre-treatment portal-venous series, with the plain study's
outputs (the same plan, the simulated tumor SEG at Dice >= 0.999, every DICOM output dciodvfy-clean).

Tiny random-weight bundles and tiny search settings (tests/helpers.py): the plumbing is the shipped one,
the plan itself means nothing, and eager PyTorch only, so two runs on the same voxels agree exactly."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from oncoplan.apps.runner import run_app
from oncoplan.apps.tace_planner.app import TacePlannerApp
from oncoplan.operators.input_check import check_input_folder
from oncoplan.training.synth.cohort import generate_cohort
from oncoplan.training.synth.pacs import cd_layout, transcode, write_pacs_series

from .dicom_validate import dciodvfy_available, problems
from .helpers import cohort_rows, tiny_tace_models
from .pacs_matrix import ct_images, make_variant, syntax_of, variant_params

pytestmark = pytest.mark.integration

SETTINGS = '{"beam": 2, "samples": 1, "steps": 2}'
UID = re.compile(r"\b\d+(\.\d+){4,}\b")  # a DICOM UID in a line
needs_dcmtk = pytest.mark.skipif(shutil.which("dcmcjpeg") is None, reason="dcmtk not installed")


@pytest.fixture(scope="module")
def liver(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One small liver case: a pre- and a post-treatment study, each with its phases as separate series."""
    cohort = generate_cohort("liver", tmp_path_factory.mktemp("pacsl") / "c", 1, seed=5, size="small", progress=False)
    row = cohort_rows(cohort)[0]
    dicom = cohort / row["TCIA_ID"] / "dicom"
    # DICOM only, as a PACS sends it: the variants are made of the DICOM files, so the plain study must not
    # plan with the case's clinical.json when they cannot
    (dicom / "pre" / "clinical.json").unlink()
    return {"dir": dicom, "pre": dicom / "pre", "pvp": cohort / row["pre_PVP_series"]}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tace_models(tmp_path_factory.mktemp("pacsl_models"))


def _plan(folder: Path, out: Path, models: Path) -> Path:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ONCOPLAN_BACKENDS", "torch")  # one backend: no timing-dependent choice between runs
        run_app(TacePlannerApp, folder, out, models, settings=SETTINGS)
    return out


@pytest.fixture(scope="module")
def plain(liver: dict, models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plain pre-treatment study (NC, AP and PVP series, Explicit VR Little Endian), planned."""
    assert syntax_of(liver["pre"]) == {ExplicitVRLittleEndian}
    return _plan(liver["pre"], tmp_path_factory.mktemp("pacsl_plain") / "out", models)


def _uid(folder: Path) -> str:
    return str(pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)


def _labels(seg: Path, sop_uids: list[str]) -> np.ndarray:
    """Every segment of a SEG on the referenced slices (slice, row, column, segment), as booleans."""
    ds = hd.seg.segread(seg)
    numbers = [int(s.SegmentNumber) for s in ds.SegmentSequence]
    return ds.get_pixels_by_source_instance(
        source_sop_instance_uids=sop_uids,
        segment_numbers=numbers,
        ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True,
    ).astype(bool)


def _same_plan(out: Path, plain: Path, pvp: Path) -> None:
    """The plan of the pre-treatment PVP series, as the plain study's: plan.json (less timings) equal, the
    simulated tumor SEG at Dice >= 0.999, every DICOM output dciodvfy-clean."""
    a, b = (json.loads((o / "plan.json").read_text()) for o in (out, plain))
    assert a["series_instance_uid"] == _uid(pvp) and a["phase"] == "PVP"
    untimed = [{k: v for k, v in p.items() if "timing" not in k} for p in (a, b)]
    assert untimed[0] == untimed[1]
    seg = pydicom.dcmread(out / "tace_post_seg.dcm", stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == _uid(pvp)
    sops = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sorted(pvp.glob("*.dcm"))]
    x, y = _labels(out / "tace_post_seg.dcm", sops), _labels(plain / "tace_post_seg.dcm", sops)
    assert x.shape == y.shape
    if x.any() or y.any():
        assert 2 * (x & y).sum() / (x.sum() + y.sum()) >= 0.999
    if dciodvfy_available():
        for p in sorted(out.glob("*.dcm")):
            assert problems(p) == [], p.name


@pytest.mark.parametrize("variant", variant_params())
def test_every_variant_of_the_liver_study_is_planned_as_the_plain_one(
    variant: str, liver: dict, plain: Path, models: Path, tmp_path: Path
) -> None:
    """Layouts (CD export; pre and post studies in one folder; viewer leftovers), transfer syntaxes (Implicit
    VR Little Endian, JPEG Lossless SV1, JPEG Lossless, JPEG-LS, RLE, JPEG 2000) and extra series (topogram,
    2x-thick reconstruction, coronal MPR, dose screen, dose SR): the same series, the same plan."""
    folder = make_variant(
        variant, liver["pre"], liver["pvp"], tmp_path / "in", lambda dest: shutil.copytree(liver["dir"], dest)
    )
    if variant.startswith("syntax:") and variant != "syntax:implicit-little-endian":
        assert all(pydicom.uid.UID(s).is_compressed for s in syntax_of(folder))
    choice = check_input_folder(folder, "liver")
    assert (choice.series.uid, choice.phase) == (_uid(liver["pvp"]), "PVP"), choice.why
    _same_plan(_plan(folder, tmp_path / "out", models), plain, liver["pvp"])


@contextmanager
def _oncoplan_log() -> Iterator[list[str]]:
    """The messages of the apps' loggers (INFO and up) while the block runs."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger, handler = logging.getLogger("oncoplan"), Collect(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@needs_dcmtk
def test_a_compressed_pacs_liver_study_is_planned_on_the_pre_treatment_pvp_series(
    liver: dict, plain: Path, models: Path, tmp_path: Path
) -> None:
    """All at once: pre and post studies in one folder, a topogram, a thick reconstruction of the PVP series
    and a dose SR, all in JPEG Lossless SV1, as a CD export: the pre-treatment PVP series (thin) is planned as
    the plain study is, and the log says which series and why."""
    folder = shutil.copytree(liver["dir"], tmp_path / "study")
    pvp = folder / liver["pvp"].relative_to(liver["dir"])
    write_pacs_series(sorted(pvp.glob("*.dcm")), pvp.parent, ["topogram", "thick_recon", "dose_sr"])
    transcode(ct_images(folder), "jpeg-lossless-sv1")
    cd = cd_layout(folder, tmp_path / "cd")
    with _oncoplan_log() as logged:  # on the logger itself: where root's handlers write depends on earlier tests
        out = _plan(cd, tmp_path / "out", models)
    chosen = [m for m in logged if "CT series chosen: series" in m]
    assert chosen and "PVP phase" in chosen[0] and "best reconstruction: thinnest slices" in chosen[0], logged[-30:]
    assert "other series passed over" in chosen[0], chosen  # each with its reason under -v (DEBUG)
    assert not [m for m in logged if UID.search(m)], "log lines carry no UID"
    _same_plan(out, plain, liver["pvp"])
