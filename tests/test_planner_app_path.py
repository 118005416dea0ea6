"""`oncoplan evaluate tace --path app`: the evaluation plans each case through the app users run
(`oncoplan plan` on the case's pre-treatment DICOM, with its clinical data as the app reads it) and
scores the app's recommendation under the ground truth. Tiny random-weight bundles (tests/helpers.py):
the plumbing is the shipped one, the plans mean nothing."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest

from oncoplan.training.planner.app_path import clinical_fields
from oncoplan.training.planner.evaluate import METHODS, main

from .helpers import cohort_rows, tiny_tace_models

APP_OUTPUTS = {"plan.json", "report.pdf", "tace_plan_sr.dcm", "tace_post_seg.dcm", "tace_report_pdf.dcm"}
FAST = ("--samples", "1", "--steps", "2", "--beam", "2", "--n-bootstrap", "50", "--quiet")


def test_the_case_clinical_json_holds_the_schema_fields_of_its_row_and_no_identifier_or_outcome() -> None:
    row = {"TCIA_ID": "HCC_X1", "site": "internal", "age": 61, "Sex": 1, "CPS": "B", "Tr_Size": "", "AFP": 12.5}
    row |= {"Vascular invasion": 1, "chemotherapy": "Cisplatin; Lipiodol", "OS": 88.0, "gold_protocol": "x"}
    assert clinical_fields(row) == {"age": 61, "Sex": 1, "CPS": "B", "AFP": 12.5, "Vascular invasion": 1}


@pytest.mark.slow
def test_evaluate_tace_through_the_app_path_plans_from_dicom_with_the_cases_clinical_data(
    prepared_liver: Path, liver_cohort: Path, tmp_path: Path
) -> None:
    models = tiny_tace_models(tmp_path / "models")
    out = tmp_path / "planning"
    argv = ["--prepared", str(prepared_liver), "--cohort", str(liver_cohort), "--out", str(out), "--limit", "1"]
    assert main([*argv, "--path", "app", "--models", str(models), *FAST]) == 0
    report = json.loads((out / "planning_evaluation.json").read_text())
    assert report["path"] == "app" and report["n_cases"] == 1 and set(report["methods"]) == set(METHODS)
    assert "path: app (`oncoplan plan`" in (out / "planning_evaluation.md").read_text()
    rows = {r["TCIA_ID"]: r for r in cohort_rows(liver_cohort)}
    for case in report["cases"]:
        row = rows[case["case_id"]]
        folder = out / "app" / case["case_id"]
        # The app ran on the case's pre-treatment DICOM and wrote all its outputs there.
        assert {p.name for p in (folder / "plan").iterdir()} == APP_OUTPUTS
        plan = json.loads((folder / "plan" / "plan.json").read_text())
        pvp = liver_cohort / row["pre_PVP_series"]
        uid = pydicom.dcmread(next(pvp.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID
        assert plan["phase"] == "PVP" and plan["series_instance_uid"] == str(uid)  # the app's series choice
        assert plan["segmentation"]["tumor_cm3"] > 0  # the assistant's segmentation, not the prepared labels
        assert plan["settings"]["beam"] == 2 and plan["settings"]["samples"] == 1
        # The recommendation scored is the app's, over the case's action set.
        assert case["methods"]["world_model"]["protocol"] == plan["best"]["protocol"]
        assert case["plan"]["app"]["clinical_source"] == "the --clinical file" and case["space_size"] == 18
        # The case's clinical data reached the plan: read from its clinical.json, nothing imputed.
        given = json.loads((folder / "clinical.json").read_text())
        assert given["CPS"] == row["CPS"] and given["AFP"] == pytest.approx(float(row["AFP"]))
        assert not {"TCIA_ID", "chemotherapy", "gold_protocol", "OS"} & set(given)
        assert plan["clinical"]["source"] == "the --clinical file" and plan["clinical"]["imputed"] == []
        assert plan["clinical"]["given"]["child_pugh"] == row["CPS"]
        assert plan["clinical"]["given"]["afp_ng_ml"] == pytest.approx(float(row["AFP"]))
        assert not any(k in json.dumps(plan["clinical"]["given"]) for k in ("chemotherapy", row["TCIA_ID"]))

    # CT only: the app finds no clinical data and plans with the training medians.
    none = tmp_path / "ct_only"
    argv[argv.index(str(out))] = str(none)
    assert main([*argv, "--path", "app", "--models", str(models), "--clinical", "none", *FAST]) == 0
    case = json.loads((none / "planning_evaluation.json").read_text())["cases"][0]
    plan = json.loads((none / "app" / case["case_id"] / "plan" / "plan.json").read_text())
    assert plan["clinical"]["source"] == "none" and "child_pugh" in plan["clinical"]["imputed"]
    assert not (none / "app" / case["case_id"] / "clinical.json").exists()


def test_the_app_path_refuses_options_the_app_does_not_take(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "planning"
    argv = ["--prepared", str(tmp_path), "--out", str(out), "--path", "app", "--search", "best_of_n", "--quiet"]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "--path app" in err[0] and "best_of_n" in err[0]
    assert not out.exists()


def test_the_evaluation_path_plans_with_the_apps_policy_by_default_and_the_site_prior_only_when_told(
    prepared_liver: Path, liver_cohort: Path, tmp_path: Path
) -> None:
    """The app and the evaluation share one default: no practice prior (the app has none; on the external site
    the prior cost 9 months). `--practice-prior site` is the ablation; the report and its page say which ran."""
    from oncoplan.planner.policy import PolicyChoice
    from oncoplan.planner.prior import Prior
    from oncoplan.planner.search import SETTINGS, WorldModelPlanner
    from oncoplan.tace.actions import TCIA_DRUGS, TCIA_EMBOLICS

    models = tiny_tace_models(tmp_path / "models")
    bundles = [f"--{k}={models / f'tace_{k}'}" for k in ("dynamics", "assistant", "survival")]
    argv = ["--prepared", str(prepared_liver), "--cohort", str(liver_cohort), "--limit", "1", *bundles, *FAST]

    def first(prior: Prior | None) -> str:
        policy = PolicyChoice().build(TCIA_DRUGS + TCIA_EMBOLICS, prior, 2, 2)
        return str(WorldModelPlanner(SimpleNamespace(), None, policy, SETTINGS["cpu"]).initial_candidates()[0][0])

    assert main([*argv, "--out", str(tmp_path / "default")]) == 0
    report = json.loads((tmp_path / "default" / "planning_evaluation.json").read_text())
    assert report["path"] == "evaluation" and report["practice_prior"] is False
    assert "practice prior" not in (tmp_path / "default" / "planning_evaluation.md").read_text()
    assert report["cases"][0]["methods"]["policy_top1"]["protocol"] == first(None)

    assert main([*argv, "--out", str(tmp_path / "site"), "--practice-prior", "site"]) == 0
    report = json.loads((tmp_path / "site" / "planning_evaluation.json").read_text())
    assert report["practice_prior"] is True
    assert ", with the site's practice prior," in (tmp_path / "site" / "planning_evaluation.md").read_text()
    assert report["cases"][0]["methods"]["policy_top1"]["protocol"] == first(Prior.from_practice("internal"))


def test_the_evaluation_path_can_plan_with_the_assistants_mask_of_the_prepared_ct(
    prepared_liver: Path, liver_cohort: Path, tmp_path: Path
) -> None:
    """`--mask assistant`: the evaluation path plans each prepared CT with the tumour the app's own segmenter
    finds in it (the ablation that separates the mask from the app's preprocessing of the DICOM); each case
    records which mask it planned with and its size."""
    import numpy as np

    from oncoplan.planner.segmenter import StudySegmenter
    from oncoplan.tace.labels import TUMOR_LABELS
    from oncoplan.training.tace.data import load_prepared

    models = tiny_tace_models(tmp_path / "models")
    bundles = [f"--{k}={models / f'tace_{k}'}" for k in ("dynamics", "assistant", "survival")]
    out = tmp_path / "planning"
    argv = ["--prepared", str(prepared_liver), "--cohort", str(liver_cohort), "--limit", "1", *bundles, *FAST]
    assert main([*argv, "--out", str(out), "--mask", "assistant"]) == 0
    report = json.loads((out / "planning_evaluation.json").read_text())
    assert report["mask"] == "assistant"
    assert "the assistant's segmentation of the prepared CT" in (out / "planning_evaluation.md").read_text()
    record = report["cases"][0]["plan"]["mask"]
    # The same segmentation, made here by the segmenter itself from the assistant bundle the evaluation used.
    from oncoplan.planner.models import load_models

    world, _, _ = load_models(*(models / f"tace_{k}" for k in ("dynamics", "assistant", "survival")))
    entry = load_prepared(prepared_liver)[0]
    segmenter = StudySegmenter(models / "tace_assistant", world.assistant_forward, 0.5)
    tumor = int(np.isin(segmenter.segment(entry["pre_image"], world.device)[1], TUMOR_LABELS).sum())
    if tumor:
        assert record["source"] == "assistant" and record["tumor_voxels"] == tumor
        assert report["mask_fallbacks"] == 0
    else:  # random weights may find none: the case keeps its label mask, and the report and its page say so
        assert record["source"].startswith("label (the assistant found no tumour")
        assert (
            report["mask_fallbacks"] == 1 and "1 case(s) kept the label" in (out / "planning_evaluation.md").read_text()
        )

    assert main([*argv, "--out", str(tmp_path / "label")]) == 0
    label = json.loads((tmp_path / "label" / "planning_evaluation.json").read_text())
    assert label["mask"] == "label" and label["cases"][0]["plan"]["mask"]["source"] == "label"
