"""TACE planning app: the SDK graph end to end on a generated liver study with tiny random-weight bundles
(SR, SEG, Encapsulated PDF, plan.json), series selection in a multi-phase study, geometry, bad input.

The MODELS folder is built in tmp: each bundle's configs, its inference.json with the bundle tests'
tiny sizes, and a randomly initialised network saved as models/model.pt. So the plumbing is the
shipped one; the plan itself means nothing (random weights).
"""

from __future__ import annotations

import json
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

from oncoplan.errors import InputError
from oncoplan.operators.series_selector import ARTERIAL
from oncoplan.operators.tace_planning import ADULT_LIVER_CM3, liver_volume_warning
from oncoplan.operators.tace_writers import SR_CANDIDATES
from oncoplan.planner.search import PAPER_SETTINGS
from oncoplan.tace.actions import Protocol
from oncoplan.tace.lesion_features import FEATURES
from oncoplan.training.synth.cohort import generate_cohort

from .dicom_validate import dciodvfy_available, problems
from .helpers import TINY_TACE, cohort_rows, tiny_tace_models

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_TACE
SETTINGS = json.dumps({"beam": 2, "samples": 1, "steps": 2})
OUTPUTS = ["plan.json", "report.pdf", "tace_plan_sr.dcm", "tace_post_seg.dcm", "tace_report_pdf.dcm"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "oncoplan", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or ENV, timeout=240, check=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_tace_models(tmp_path_factory.mktemp("tace_models"))


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One small liver case: pre and post studies, each with its phases as separate series."""
    cohort = generate_cohort("liver", tmp_path_factory.mktemp("taceapp") / "c", 1, seed=5, size="small", progress=False)
    row = cohort_rows(cohort)[0]
    series = {k: cohort / v for k, v in row.items() if k.endswith("_series") and v}
    assert {"pre_AP_series", "pre_PVP_series"} <= set(series), row
    # DICOM only, as a PACS sends it: without the generated clinical.json the app plans from the CT alone
    # (the training medians), the baseline the clinical-data tests compare with.
    (cohort / row["TCIA_ID"] / "dicom" / "pre" / "clinical.json").unlink()
    return {"dir": cohort / row["TCIA_ID"] / "dicom", "series": series}


def _uid(folder: Path) -> str:
    return str(pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)


def _ct(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]


@pytest.fixture(scope="module")
def planned(case: dict, models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`oncoplan plan` on the pre-treatment study (NC, AP and PVP series) with tiny settings."""
    out = tmp_path_factory.mktemp("taceapp_out") / "out"
    r = _cli("plan", "-i", str(case["dir"] / "pre"), "-o", str(out), "-m", str(models), "--settings", SETTINGS)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "RESEARCH USE ONLY" in r.stdout
    return out


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON (RFC 8259)")


def test_plan_writes_sr_seg_pdf_and_json(planned: Path) -> None:
    assert sorted(p.name for p in planned.iterdir()) == OUTPUTS
    plan = json.loads((planned / "plan.json").read_text(), parse_constant=_not_json)  # strict: no NaN/Infinity
    assert plan["research_use_only"] and plan["phase"] == "PVP"
    risks = [r["mean_risk"] for r in plan["ranked"]]
    assert len(risks) >= 2 and risks == sorted(risks)
    assert plan["best"] == plan["ranked"][0]
    assert plan["settings"]["beam"] == 2 and plan["settings"]["samples"] == 1 and plan["settings"]["steps"] == 2
    # The layout read-out with the offline policy scores every valid protocol of the whole base.
    assert plan["method"] == "best_of_n" and plan["settings"]["search"] == "auto" and len(plan["ranked"]) > 1000
    # The assistant's volumes, and a warning exactly when the liver is outside the adult range (random
    # weights here: either may hold).
    # Each network's time over the whole plan: the assistant segmented the study, the dynamics UNet
    # rendered the top candidates' outcomes.
    assert plan["model_timing_s"]["assistant"] > 0 and plan["model_timing_s"]["dynamics"] > 0
    seg = plan["segmentation"]
    assert seg["liver_cm3"] >= seg["tumor_cm3"] > 0
    # The world model read the lesion in both phases of the study (the arterial one beside the planning series).
    assert set(plan["lesion_features"]) == set(FEATURES) and None not in plan["lesion_features"].values()
    assert seg["warning"] == liver_volume_warning(seg["liver_cm3"])


def test_plan_json_holds_no_nan_or_infinity() -> None:
    from oncoplan.operators.tace_writers import _finite

    value = {"a": [1.0, float("nan")], "b": np.float32("inf"), "c": ({"d": -float("inf")}, 2), "e": "x"}
    assert _finite(value) == {"a": [1.0, None], "b": None, "c": [{"d": None}, 2], "e": "x"}


def test_a_liver_outside_the_adult_range_is_flagged() -> None:
    lo, hi = ADULT_LIVER_CM3
    assert (
        liver_volume_warning(1500.0) is None and liver_volume_warning(lo) is None and liver_volume_warning(hi) is None
    )
    for cm3 in (303.0, hi + 1):
        warning = liver_volume_warning(cm3)
        assert warning is not None and f"{cm3:.0f} cm3" in warning and "whole liver" in warning


@pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy (dicom3tools) not installed")
def test_dicom_outputs_pass_dciodvfy(planned: Path) -> None:
    for p in sorted(planned.glob("*.dcm")):
        assert problems(p) == [], p.name


def _concept(item) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def _children(item, code: str) -> list:
    return [c for c in item.ContentSequence if _concept(c) == code]


def _num(item, code: str) -> float:
    (c,) = _children(item, code)
    return float(c.MeasuredValueSequence[0].NumericValue)


def test_sr_holds_the_ranked_protocols_and_references_the_pvp_series(planned: Path, case: dict) -> None:
    sr = pydicom.dcmread(planned / "tace_plan_sr.dcm")
    pvp = case["series"]["pre_PVP_series"]
    ct = pydicom.dcmread(next(pvp.glob("*.dcm")), stop_before_pixels=True)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert "research use only" in sr.SeriesDescription.lower()
    assert sr.StudyInstanceUID == ct.StudyInstanceUID and sr.PatientID == ct.PatientID
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert [s.SeriesInstanceUID for s in evidence.ReferencedSeriesSequence] == [ct.SeriesInstanceUID]
    assert len(evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence) == len(list(pvp.glob("*.dcm")))
    comments = [c.TextValue for c in _children(sr, "121106")]
    assert "RESEARCH USE ONLY" in comments[0]
    plan = json.loads((planned / "plan.json").read_text())
    warning = plan["segmentation"]["warning"]  # the liver volume's, when outside the adult range
    assert comments[1:] == ([f"Warning: {warning}"] if warning else [])
    (search,) = _children(sr, "TACE-SEARCH")
    assert "every valid protocol" in search.TextValue and f"{len(plan['ranked'])} protocols scored" in search.TextValue
    (chosen,) = _children(sr, "TACE-CHOSEN")
    candidates = _children(sr, "TACE-CANDIDATE")
    assert len(candidates) == min(len(plan["ranked"]), SR_CANDIDATES)  # the first of the ranked, not all 1,404
    pairs = zip([chosen, *candidates], [plan["best"], *plan["ranked"][:SR_CANDIDATES]], strict=True)
    for rank, (item, expected) in enumerate(pairs):
        assert _num(item, "TACE-RANK") == max(rank, 1)
        (protocol,) = _children(item, "TACE-PROTOCOL")
        assert protocol.TextValue == expected["protocol"]
        codes = [c.ConceptCodeSequence[0].CodeMeaning for c in _children(item, "TACE-ITEM")]
        assert codes == expected["items"]
        assert _num(item, "TACE-RISK-MEAN") == pytest.approx(expected["mean_risk"], rel=1e-5, abs=1e-9)
        assert _num(item, "TACE-RISK-SD") == pytest.approx(expected["std_risk"], rel=1e-5, abs=1e-9)
        assert _num(item, "TACE-OUTCOMES") == 1
    assert [s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence] == ["99ONCOPLAN"]


def test_seg_frames_lie_on_the_input_ct_grid(planned: Path, case: dict) -> None:
    pvp = case["series"]["pre_PVP_series"]
    ct = _ct(pvp)
    seg = hd.seg.segread(planned / "tace_post_seg.dcm")
    assert "research use only" in seg.SeriesDescription.lower()
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [ct[0].SeriesInstanceUID]
    assert seg.StudyInstanceUID == ct[0].StudyInstanceUID and seg.FrameOfReferenceUID == ct[0].FrameOfReferenceUID
    assert (seg.Rows, seg.Columns) == (ct[0].Rows, ct[0].Columns)
    iop = np.asarray(ct[0].ImageOrientationPatient, dtype=float)
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for ds in ct])
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert np.allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient, iop)
    assert np.allclose(shared.PixelMeasuresSequence[0].PixelSpacing, ct[0].PixelSpacing)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ipp = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        assert np.abs(positions - ipp).sum(1).min() < 1e-3
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels and set(labels) <= {
        "Viable tumor (simulated)",
        "Necrosis (simulated)",
        "Lipiodol deposit (simulated)",
    }
    assert all(s.SegmentAlgorithmType == "AUTOMATIC" for s in seg.SegmentSequence)
    counts = json.loads((planned / "plan.json").read_text())["simulated_post_treatment_voxels"]
    uids = [ds.SOPInstanceUID for ds in ct]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, ignore_spatial_locations=True, assert_missing_frames_are_empty=True
    )
    for number, label in enumerate(labels, start=1):
        assert int(pixels[..., number - 1].sum()) == counts[label]


def test_pdf_report_and_its_encapsulated_copy(planned: Path, case: dict) -> None:
    pdf = (planned / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-64:]
    ds = pydicom.dcmread(planned / "tace_report_pdf.dcm")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1" and ds.Modality == "DOC"
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert bytes(ds.EncapsulatedDocument)[: ds.EncapsulatedDocumentLength] == pdf
    assert "research use only" in ds.SeriesDescription.lower()
    ct = _ct(case["series"]["pre_PVP_series"])
    assert ds.StudyInstanceUID == ct[0].StudyInstanceUID
    assert {s.ReferencedSOPInstanceUID for s in ds.SourceInstanceSequence} == {c.SOPInstanceUID for c in ct}


def _studies(folder: Path):
    from monai.deploy.core import Fragment
    from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator

    from oncoplan.operators.series_selector import RuleSeriesSelectorOperator

    fragment = Fragment()
    loader = DICOMDataLoaderOperator(fragment, name="loader")
    selector = RuleSeriesSelectorOperator(fragment, organ="liver", name="selector")
    return selector, None, loader.load_data_to_studies(folder.absolute())


def _selection(folder: Path) -> list[tuple[str, str]]:
    """(SeriesInstanceUID, selection name) of every series the selector emits, the planning series first."""
    selector, rules, studies = _studies(folder)
    (study,) = selector.filter(rules, studies)
    return [(str(one.series.SeriesInstanceUID), one.selection_name) for one in study.selected_series]


def _selected(folder: Path) -> tuple[str, str]:
    return _selection(folder)[0]


def test_selector_takes_the_pre_treatment_pvp_series(case: dict, tmp_path: Path) -> None:
    series = case["series"]
    # Both studies (five series): the earlier study's portal-venous series, and its arterial series beside it
    # (second: the SDK's series-to-volume operator converts the first only; the planner reads both phases).
    assert _selection(case["dir"]) == [
        (_uid(series["pre_PVP_series"]), "PVP"),
        (_uid(series["pre_AP_series"]), ARTERIAL),
    ]
    # Descriptions that decide nothing: the bolus timing still tells AP from PVP.
    blank = tmp_path / "blank"
    shutil.copytree(case["dir"] / "pre", blank)
    for f in blank.rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = ""
        ds.save_as(f)
    assert _selected(blank) == (_uid(series["pre_PVP_series"]), "PVP")
    # Without the PVP series: the arterial one.
    no_pvp = tmp_path / "no_pvp"
    shutil.copytree(case["dir"] / "pre", no_pvp, ignore=shutil.ignore_patterns(series["pre_PVP_series"].name))
    assert _selection(no_pvp) == [(_uid(series["pre_AP_series"]), "AP")]
    # An arterial series of another frame of reference does not map onto the portal-venous grid: not read.
    other_frame = tmp_path / "other_frame"
    shutil.copytree(case["dir"] / "pre", other_frame)
    for f in (other_frame / series["pre_AP_series"].name).rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.save_as(f)
    assert _selection(other_frame) == [(_uid(series["pre_PVP_series"]), "PVP")]
    # Non-contrast only: nothing to plan on, one line naming what was found.
    nc_only = tmp_path / "nc_only"
    keep = {series[k].name for k in ("pre_AP_series", "pre_PVP_series")}
    shutil.copytree(case["dir"] / "pre", nc_only, ignore=shutil.ignore_patterns(*keep))
    selector, rules, studies = _studies(nc_only)
    with pytest.raises(InputError, match="no pre-treatment contrast CT") as err:
        selector.filter(rules, studies)
    assert "\n" not in str(err.value)
    # A portal-venous series that says it is of the chest is no candidate: the arterial one is taken.
    chest_pvp = tmp_path / "chest_pvp"
    shutil.copytree(case["dir"] / "pre", chest_pvp)
    _set_body_part(chest_pvp / series["pre_PVP_series"].name, "Chest")
    assert _selected(chest_pvp) == (_uid(series["pre_AP_series"]), "AP")


def _set_body_part(folder: Path, part: str) -> None:
    for f in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.BodyPartExamined = part
        ds.save_as(f)


def test_a_ct_of_another_region_is_refused_before_any_model_runs(case: dict, models: Path, tmp_path: Path) -> None:
    """A chest CT sent to the TACE planner (here the liver study relabelled BREAST and CHEST, as a breast RT
    planning CT is): the assistant would find a "liver" and a "tumor" in it and the plan would look as
    sure as any. Exit 2, one line naming the body part, nothing written."""
    chest = tmp_path / "chest"
    shutil.copytree(case["dir"] / "pre", chest)
    for i, folder in enumerate(sorted(p for p in chest.iterdir() if p.is_dir())):
        _set_body_part(folder, ("BREAST", "CHEST")[i % 2])
    out = tmp_path / "out"
    r = _cli("plan", "-i", str(chest), "-o", str(out), "-m", str(models), "--settings", SETTINGS)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("oncoplan: error:") and "BodyPartExamined is BREAST, CHEST" in last, last
    assert not out.exists() or list(out.iterdir()) == []


def test_bad_input_and_missing_weights_exit_2_and_leave_nothing(
    case: dict, models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    r = _cli("plan", "-i", str(empty), "-o", str(out), "-m", str(models), "--settings", SETTINGS)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("oncoplan: error:") and "empty" in last
    assert not out.exists() or list(out.iterdir()) == []
    # Refused before the graph starts (in-process: no interpreter start-up).
    from oncoplan.cli import main

    capsys.readouterr()
    assert main(["plan", "-i", str(case["dir"] / "pre"), "-o", str(out), "--settings", "fast"]) == 2
    assert "settings 'fast'" in capsys.readouterr().err.strip().splitlines()[-1]
    unweighted = tmp_path / "unweighted"
    for name in TINY:
        shutil.copytree(models / name / "configs", unweighted / name / "configs")
    assert main(["plan", "-i", str(case["dir"] / "pre"), "-o", str(out), "-m", str(unweighted)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    said = [line for line in err if not re.match(r"^ *\d+\.\d s  ", line)]  # besides the stage lines
    assert len(said) == 1 and "no weights for the tace_assistant bundle" in said[0] and err[-1] == said[0], err
    assert not out.exists() or list(out.iterdir()) == []
    # The settings of a MAP run come from the environment: a bad value is refused as one line too.
    from oncoplan.apps.runner import main as run
    from oncoplan.apps.tace_planner.app import TacePlannerApp

    monkeypatch.setenv("ONCOPLAN_TACE_SETTINGS", "bogus")
    assert run(TacePlannerApp, ["tace", "-i", str(case["dir"] / "pre"), "-o", str(out), "-m", str(models)]) == 2
    assert "settings 'bogus'" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists() or list(out.iterdir()) == []


def test_monai_deploy_exec_with_holoscan_variables(case: dict, models: Path, tmp_path: Path) -> None:
    """The card's command, paths from the HOLOSCAN_* variables and the settings from the environment."""
    out = tmp_path / "out"
    env = {
        **ENV,
        "HOLOSCAN_INPUT_PATH": str(case["dir"] / "pre"),
        "HOLOSCAN_OUTPUT_PATH": str(out),
        "HOLOSCAN_MODEL_PATH": str(models),
        "ONCOPLAN_TACE_SETTINGS": json.dumps({"beam": 1, "samples": 1, "steps": 1, "drug_horizon": 1}),
    }
    exe = Path(sys.executable).with_name("monai-deploy")
    r = subprocess.run([str(exe), "exec", "tace_planner"], capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS
    plan = json.loads((out / "plan.json").read_text())
    assert plan["settings"]["beam"] == 1 and plan["settings"]["drug_horizon"] == 1


def test_python_m_with_flags(case: dict, models: Path, tmp_path: Path) -> None:
    """`python -m oncoplan.apps.tace_planner -i -o -m --settings` (the SDK's way of running an app)."""
    out = tmp_path / "out"
    settings = json.dumps({"beam": 1, "samples": 1, "steps": 1, "embolic_horizon": 1})
    cmd = [sys.executable, "-m", "oncoplan.apps.tace_planner", "-i", str(case["dir"] / "pre"), "-o", str(out)]
    r = subprocess.run([*cmd, "-m", str(models), "--settings", settings], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS
    assert json.loads((out / "plan.json").read_text())["settings"]["embolic_horizon"] == 1


def test_settings() -> None:
    from oncoplan.operators.tace_planning import parse_settings

    assert parse_settings("paper").search == PAPER_SETTINGS
    tiny = parse_settings('{"base": "paper", "samples": 1, "action_set": "tcia"}')
    assert tiny.search.beam == 5 and tiny.search.samples == 1 and len(tiny.action_set) == 5
    assert parse_settings('{"defer_alpha": 0.05}').search.defer_alpha == 0.05
    assert parse_settings('{"search": "beam"}').search.search == "beam"
    bad_values = ('{"beam": 0}', '{"bogus": 1}', '{"action_set": "all"}', '{"defer_alpha": 2}', '{"search": "all"}')
    for bad in ("fast", "[1]", *bad_values):
        with pytest.raises(InputError, match="settings"):
            parse_settings(bad)


def test_a_model_space_label_map_lands_at_its_physical_position(case: dict) -> None:
    """onto_ct_grid: a 6 mm RAS ball around a point maps onto the CT grid around the same point."""
    from oncoplan.operators.ct_volume import CTVolume
    from oncoplan.operators.tace_planning import onto_ct_grid

    ct = _ct(case["series"]["pre_PVP_series"])
    normal = np.cross(*np.reshape(np.asarray(ct[0].ImageOrientationPatient, dtype=float), (2, 3)))
    ct.sort(key=lambda ds: float(np.asarray(ds.ImagePositionPatient, dtype=float) @ normal))
    volume = CTVolume(np.zeros((len(ct), ct[0].Rows, ct[0].Columns), np.float32), tuple(ct))
    centre_ras = volume.affine_ras() @ np.array([ct[0].Columns / 2, ct[0].Rows / 2, len(ct) / 2, 1.0])
    affine = np.diag([6.0, 6.0, 6.0, 1.0])
    affine[:3, 3] = centre_ras[:3] - 6.0 * 20
    grid = np.stack(np.meshgrid(*[np.arange(40)] * 3, indexing="ij"), -1)
    labels = (np.linalg.norm(grid - 20, axis=-1) <= 5).astype(np.uint8) * 3  # radius 30 mm
    mask = onto_ct_grid(labels, affine, volume) == 3
    index = np.argwhere(mask)[:, ::-1].mean(0)  # (column, row, slice)
    assert np.linalg.norm((volume.affine_ras() @ np.append(index, 1.0))[:3] - centre_ras[:3]) < 3.0
    voxel_mm3 = abs(np.linalg.det(volume.affine_ras()[:3, :3]))
    assert mask.sum() * voxel_mm3 == pytest.approx(labels.astype(bool).sum() * 216.0, rel=0.15)


def test_a_warm_worker_plans_as_a_fresh_process_does(case: dict, models: Path, planned: Path, tmp_path: Path) -> None:
    """Two plans in one warm worker (the listener's default for app routes), models kept between
    them: each the same plan as the fresh `oncoplan plan` process's (`planned`)."""
    from oncoplan.deploy.listener.config import APP_MODULES
    from oncoplan.deploy.listener.warm import WarmApp

    app = WarmApp(APP_MODULES["tace"], tmp_path / "worker.log")
    argv = ["plan", "-i", str(case["dir"] / "pre"), "-m", str(models), "--settings", SETTINGS]
    try:
        for run in ("a", "b"):
            assert app.run([*argv, "-o", str(tmp_path / run)], tmp_path / f"{run}.log", 600) == 0
    finally:
        app.stop()
    fresh = json.loads((planned / "plan.json").read_text())
    for run in ("a", "b"):
        warm = json.loads((tmp_path / run / "plan.json").read_text())
        assert sorted(p.name for p in (tmp_path / run).iterdir()) == OUTPUTS
        assert [r["protocol"] for r in warm["ranked"]] == [r["protocol"] for r in fresh["ranked"]]
        np.testing.assert_allclose(
            [r["mean_risk"] for r in warm["ranked"]], [r["mean_risk"] for r in fresh["ranked"]], rtol=1e-4
        )
        assert warm["simulated_post_treatment_voxels"] == fresh["simulated_post_treatment_voxels"]
    assert (tmp_path / "worker.log").read_text().count("ready") == 1


# -- clinical data, contraindications and the LLM policy through the app --------------------------------

TEXT_VRS = ("PN", "LO", "SH", "LT", "ST", "UT")
ADDED = {  # identifying attributes a PACS study may carry that the generated one lacks: planted too
    "InstitutionName": "LO",
    "InstitutionAddress": "ST",
    "ReferringPhysicianName": "PN",
    "OperatorsName": "PN",
    "OtherPatientIDs": "LO",
    "PatientAddress": "LO",
    "AdditionalPatientHistory": "LT",
    "ImageComments": "LT",
    "StationName": "SH",
    "RequestingPhysician": "PN",
}
CLINICAL_PLANTED = {  # identifiers in the clinical data itself, beside the fields the models read
    "PatientName": "DOE^PLANTEDCLIN",
    "PatientID": "MRN-PLANTED-77",
    "TCIA_ID": "HCC_PLANTED",
    "note": "seen by Dr Plantedson at Planted General",
    "prior_treatments": ["RFA at Planted General by Dr Plantedson"],
    "age": 93,
    "child_pugh": "C",
    "main_portal_vein_invasion": True,
}  # AFP not given: imputed with the training median


def _plant(src: Path, dst: Path) -> tuple[list[str], dict[str, str]]:
    """A copy of the study with an identifier planted in every text field (PN, LO, SH, LT, ST, UT) of every
    file, and the usual identifying attributes added; returns every identifying value of the copy (the
    planted values, its UIDs and dates) as the test looks for them in raw bytes, and the planted value of
    each attribute keyword."""
    tokens: dict[int, str] = {}
    named: dict[str, str] = {}
    found: set[str] = set()

    def token(tag: int, keyword: str) -> str:
        named[keyword] = tokens.setdefault(tag, f"PLANTED{len(tokens)}")
        return named[keyword]

    shutil.copytree(src, dst)
    for f in sorted(dst.rglob("*.dcm")):
        ds = pydicom.dcmread(f)
        for keyword, vr in ADDED.items():
            if keyword not in ds:
                ds.add_new(keyword, vr, "")
        for elem in ds.iterall():
            if elem.VR in TEXT_VRS and not isinstance(elem.value, pydicom.sequence.Sequence):
                old = "" if elem.value is None else str(elem.value)
                new = token(elem.tag, elem.keyword)
                elem.value = new if elem.VR in ("PN", "SH") or not old else f"{old} {new}"
            elif elem.VR == "UI" and elem.keyword != "SOPClassUID" and elem.keyword != "TransferSyntaxUID":
                found.add(str(elem.value))
            elif elem.VR == "DA" and elem.value:
                found |= {str(elem.value), f"{elem.value[:4]}-{elem.value[4:6]}-{elem.value[6:]}"}
        ds.save_as(f)
    return sorted(found | set(tokens.values())), named


def _offline_first() -> Protocol:
    from oncoplan.planner.policy import OfflinePolicy

    s = json.loads(SETTINGS)
    policy = OfflinePolicy(max_drugs=s.get("drug_horizon", 2), max_embolics=s.get("embolic_horizon", 2))
    return policy.propose(None, 1)[0].protocol


def _risk(plan: dict, protocol: Protocol) -> float:
    (mean,) = [r["mean_risk"] for r in plan["ranked"] if r["protocol"] == str(protocol)]
    return mean


def test_the_app_plans_with_the_patients_data_through_an_llm_that_sees_no_identifier(
    case: dict, models: Path, planned: Path, tmp_path: Path
) -> None:
    """`oncoplan plan --policy openai --allow-send` against an OpenAI-compatible server on loopback that
    records every byte: identifiers planted in every DICOM text field and in clinical.json reach none of
    them; the clinical data is read, AFP imputed, the contraindications flagged in plan.json and the SR;
    and the risks move from the all-medians plan (`planned`) by exactly what the response model's
    coefficients say for Child-Pugh C and vascular invasion."""
    from oncoplan.planner.response_heuristic import ResponseCox

    from .test_planner_policy import LoopbackLLM

    study = tmp_path / "copy" / "pre"
    secrets, named = _plant(case["dir"] / "pre", study)
    (study / "clinical.json").write_text(json.dumps(CLINICAL_PLANTED))
    first = _offline_first()
    llm = LoopbackLLM()
    answer = {"Chemotherapy Drugs": "; ".join(first.drugs), "Embolization Materials": "; ".join(first.embolics)}
    llm.script = [json.dumps(answer)]
    env = {**ENV, "OPENAI_API_KEY": "sk-test", "ONCOPLAN_LLM_BASE_URL": llm.base_url, "ONCOPLAN_LLM_MODEL": "site-llm"}
    out = tmp_path / "out"
    try:
        args = ["plan", "-i", str(study), "-o", str(out), "-m", str(models), "--settings", SETTINGS]
        r = _cli(*args, "--policy", "openai", "--allow-send", env=env)
    finally:
        llm.close()
    assert r.returncode == 0, r.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS
    # What left the machine: one request, with the de-identified case and none of the planted values.
    assert len(llm.raw) == 1
    raw = llm.raw[0]
    assert b"PLANTED" not in raw.upper()
    for value in secrets:
        assert value.encode() not in raw, value
    sent = llm.bodies[0]["messages"][0]["content"]
    text = sent[0]["text"] if isinstance(sent, list) else sent
    assert "Age: 90 years or older." in text and "Child-Pugh class: C." in text and "Vascular invasion: yes." in text
    # Nor is any identifier of the patient in a log line.
    logged = r.stdout + r.stderr
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "InstitutionName", "ReferringPhysicianName"):
        assert named[keyword] not in logged, keyword
    assert "Plantedson" not in logged and "MRN-PLANTED" not in logged and "HCC_PLANTED" not in logged
    plan = json.loads((out / "plan.json").read_text())
    assert plan["policy"]["label"] == "openai:site-llm" and plan["policy"]["planned_by"] == "openai:site-llm"
    assert plan["policy"]["fallback"] is None and "sk-test" not in json.dumps(plan)
    clinical = plan["clinical"]
    assert clinical["source"] == "clinical.json" and clinical["imputed"] == ["afp_ng_ml"]
    assert set(clinical["ignored_keys"]) == {"PatientName", "PatientID", "TCIA_ID", "note"}
    assert {f["code"] for f in plan["contraindications"]} == {"child_pugh_c", "main_portal_vein"}
    # The values reached the response model (instead of the medians of `planned`).
    model = ResponseCox.load(models / "tace_survival" / "models" / "response_cox.json")
    c, m = model.coef, model.median
    shift = c["Child-Pugh"] * (2 - m["Child-Pugh"]) + c["vascular invasion"] * (1 - m["vascular invasion"])
    shift += c["drugs x Child-Pugh"] * len(first.drugs) * (2 - m["Child-Pugh"])
    without = json.loads((planned / "plan.json").read_text())
    assert _risk(plan, first) - _risk(without, first) == pytest.approx(shift, abs=1e-4)
    assert without["clinical"]["source"] == "none"
    assert without["clinical"]["imputed"] == ["child_pugh", "afp_ng_ml", "vascular_invasion"]
    assert without["contraindications"] == [] and without["policy"]["planned_by"] == "offline"
    # The SR says it too (its own concepts, so the comments stay the disclaimer and the warning).
    sr = pydicom.dcmread(out / "tace_plan_sr.dcm")
    flags = [c.TextValue for c in _children(sr, "TACE-FLAG")]
    assert any(f.startswith("CONTRAINDICATION: Child-Pugh C") for f in flags) and len(flags) == 2
    (imputed,) = _children(sr, "TACE-IMPUTED")
    assert imputed.TextValue == "planned with the training median for afp_ng_ml"
    assert "openai:site-llm" in _children(sr, "TACE-POLICY")[0].TextValue


def test_a_map_run_takes_the_policy_and_clinical_data_from_the_environment_and_falls_back_on_a_bad_answer(
    case: dict, models: Path, tmp_path: Path
) -> None:
    """The MAP's way: `python -m oncoplan.apps.tace_planner` with ONCOPLAN_POLICY, ONCOPLAN_LLM_ALLOW_SEND and
    ONCOPLAN_CLINICAL (the JSON itself). The endpoint answers outside the action base every time: the
    offline policy plans, and plan.json says why."""
    from .test_planner_policy import LoopbackLLM

    llm = LoopbackLLM()
    llm.script = ['{"Chemotherapy Drugs": "Aspirin", "Embolization Materials": "Glue"}'] * 3
    env = {
        **ENV,
        "OPENAI_API_KEY": "sk-test",
        "ONCOPLAN_LLM_BASE_URL": llm.base_url,
        "ONCOPLAN_POLICY": "openai",
        "ONCOPLAN_LLM_ALLOW_SEND": "1",
        "ONCOPLAN_CLINICAL": json.dumps({"bilirubin_mg_dl": "68 umol/L", "CPS": "B", "AFP": 20}),
    }
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "oncoplan.apps.tace_planner", "-i", str(case["dir"] / "pre"), "-o", str(out)]
    try:
        r = subprocess.run(
            [*cmd, "-m", str(models), "--settings", SETTINGS], capture_output=True, text=True, env=env, timeout=240
        )
    finally:
        llm.close()
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(llm.raw) == 3  # the answer and two retries, each refused
    plan = json.loads((out / "plan.json").read_text())
    assert plan["policy"]["planned_by"] == "offline" and "no valid answer in 3 attempt(s)" in plan["policy"]["fallback"]
    assert plan["clinical"]["source"] == "$ONCOPLAN_CLINICAL" and plan["clinical"]["imputed"] == ["vascular_invasion"]
    assert plan["clinical"]["given"]["bilirubin_mg_dl"] == pytest.approx(68 / 17.1, abs=1e-3)
    assert [f["code"] for f in plan["contraindications"]] == ["bilirubin"]
    assert "fell back to the offline policy" in r.stderr


def test_bad_clinical_data_or_an_unconsented_llm_exit_2_and_write_nothing(
    case: dict, models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from oncoplan.cli import main

    bad = tmp_path / "clinical.json"
    bad.write_text(json.dumps({"child_pugh": "A", "albumin_g_dl": "3.1 mmol/L"}))
    out = tmp_path / "out"
    pre = str(case["dir"] / "pre")
    capsys.readouterr()
    assert main(["plan", "-i", pre, "-o", str(out), "-m", str(models), "--clinical", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"oncoplan: error: {bad}: albumin_g_dl: unit 'mmol/l' not understood (units: g/dl, g/l)"
    assert not out.exists()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["plan", "-i", pre, "-o", str(out), "-m", str(models), "--policy", "openai"]) == 2
    assert "opt in with --allow-send" in capsys.readouterr().err
    assert main(["plan", "-i", pre, "-o", str(out), "-m", str(models), "--policy", "openai", "--allow-send"]) == 2
    assert "no API key" in capsys.readouterr().err
    assert not out.exists()
