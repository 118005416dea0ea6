"""A generated liver case carries its clinical data as the TACE app reads it: `dicom/pre/clinical.json`,
the values of its cohort.csv row in the schema's names and units."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oncoplan.operators.clinical_data import read_clinical
from oncoplan.planner.response_heuristic import ResponseCox

from .helpers import cohort_rows

REPO = Path(__file__).resolve().parents[1]


def test_each_case_has_a_clinical_json_the_app_reads_with_its_cohort_row_values(
    liver_cohort: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For every generated case: the file holds exactly the row's age, sex, Child-Pugh, AFP (ng/mL),
    vascular invasion, nodularity and Tr_Size (cm, only where the row reports it), under the schema's
    names; the app's reader (`oncoplan plan -i <case>/dicom/pre` without --clinical) takes it from the
    input folder with no key ignored, and the response model then imputes no covariate."""
    monkeypatch.delenv("ONCOPLAN_CLINICAL", raising=False)
    cox = ResponseCox.load(REPO / "bundles" / "tace_survival" / "models" / "response_cox.json")
    for row in cohort_rows(liver_cohort):
        study = liver_cohort / row["TCIA_ID"] / "dicom" / "pre"
        written = json.loads((study / "clinical.json").read_text())
        expected = {
            "age": int(row["age"]),
            "sex": {"1": "M", "2": "F"}[row["Sex"]],
            "child_pugh": row["CPS"],
            "afp_ng_ml": float(row["AFP"]),
            "vascular_invasion": row["Vascular invasion"] == "1",
            "tumor_nodularity": row["tumor_nodul"],
        }
        if row["Tr_Size"]:
            expected["largest_tumor_cm"] = float(row["Tr_Size"])
        assert written == expected
        reading = read_clinical(study)
        assert reading.source == "clinical.json" and reading.ignored == []
        assert reading.data.given() == expected
        # The values reach the risk model as the evaluation reads them from cohort.csv.
        model_row = reading.data.row()
        assert model_row["CPS"] == row["CPS"] and model_row["AFP"] == pytest.approx(float(row["AFP"]))
        assert model_row["Vascular invasion"] == int(row["Vascular invasion"])
        assert not [v["field"] for v in cox.covariates_used(model_row).values() if v["imputed"]]
        # Only the pre-treatment study holds it (the post study is the outcome, not the planning input).
        assert not (study.parent / "post" / "clinical.json").exists()
        assert not (study.parent / "clinical.json").exists()
