"""The planner's response heuristic: a Cox model of the measured residual viable tumor, the regimen and the
patient, fitted on training cohorts and applied to the world model's segmented simulations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from oncoplan.errors import InputError
from oncoplan.planner.models import load_heuristic
from oncoplan.planner.response_heuristic import (
    CLINICAL,
    FEATURES,
    LATER_TERMS,
    RESPONSE,
    ResponseCox,
    ResponseRiskScorer,
    clinical_covariates,
    regimen_features,
)
from oncoplan.planner.search import valid_protocols
from oncoplan.tace.actions import Protocol
from oncoplan.tace.labels import LABELS
from oncoplan.tace.world_model import Simulation
from oncoplan.training.planner.response_fit import fit_table, training_table
from oncoplan.training.synth import liver as L
from oncoplan.training.tace.dynamics_eval import spearman

ROOT = Path(__file__).resolve().parents[1]
SPACE = valid_protocols(("Cisplatin", "Doxorubicin", "Mitomycin", "Lipiodol", "LC Beads"))


def _generator_table(cases: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, list[L.LiverPatient]]:
    """Patients of the synthetic liver generator on random protocols; the residual viable volume as the
    ground truth has it (what a perfect post-treatment segmentation measures)."""
    rng = np.random.default_rng(seed)
    rows, events, times, patients = [], [], [], []
    centre, radii = np.zeros(3), np.array([90.0, 80.0, 70.0])
    for i in range(cases):
        patient = L.sample_patient(f"T{i:04d}", rng, centre, radii)
        protocol = L.random_protocol(rng)
        out = L.outcome(patient, protocol)
        t, e = L.sample_survival(out, rng)
        rows.append(_features(patient, protocol, out.viable_fraction))
        events.append(e)
        times.append(t)
        patients.append(patient)
    return pd.DataFrame(rows), np.asarray(events, bool), np.asarray(times), patients


def _features(patient: L.LiverPatient, protocol: Protocol, viable_fraction: float) -> dict[str, float]:
    clinical = clinical_covariates(
        {"CPS": patient.cps, "AFP": patient.afp, "Vascular invasion": patient.vascular_invasion}
    )
    return {
        RESPONSE: math.log1p(patient.burden_cm3 * viable_fraction),
        **regimen_features(protocol, clinical["Child-Pugh"]),
        **clinical,
        "ln(1 + burden cm3)": math.log1p(patient.burden_cm3),
    }


def test_fit_recovers_the_response_effect_and_orders_one_patients_protocols() -> None:
    """Fitted on 800 generator patients, the residual-viable log hazard ratio is near the generator's
    0.55, and with the true response the model orders each new patient's protocols like the truth."""
    x, event, time, _ = _generator_table(800, 11)
    model = fit_table(x, event, time, ["generator"])
    assert model.cases == 800 and model.events == int(event.sum())
    assert 0.35 < model.coef[RESPONSE] < 0.8
    assert model.coef["vascular invasion"] > 0 and model.coef["ln(1 + burden cm3)"] > 0
    _, _, _, patients = _generator_table(10, 12)
    rho = []
    for patient in patients:
        outcomes = [L.outcome(patient, p) for p in SPACE]
        risk = [
            float(model.risk(_features(patient, p, o.viable_fraction))) for p, o in zip(SPACE, outcomes, strict=True)
        ]
        rho.append(spearman(risk, [o.linear_predictor for o in outcomes]))
    assert np.mean(rho) > 0.8, rho


def test_terms_left_out_of_the_fit_score_nothing_and_the_model_file_says_so(tmp_path: Path) -> None:
    """--without: the Child-Pugh interactions of the regimen are not fitted (coefficient 0), the rest is, the
    saved model names what was left out; an unknown term, or the response itself, is refused in one line."""
    x, event, time, _ = _generator_table(400, 14)
    left = ("drugs x Child-Pugh", "embolics x Child-Pugh")
    model = fit_table(x, event, time, ["generator"], left)
    assert all(model.coef[t] == 0.0 for t in left) and model.coef["drugs"] != 0.0
    assert model.mean["drugs x Child-Pugh"] == pytest.approx(x["drugs x Child-Pugh"].mean())
    again = ResponseCox.load(model.save(tmp_path / "m.json"))
    assert again.left_out == left and again.coef == model.coef
    for bad in ("drugs per day", RESPONSE):
        with pytest.raises(InputError, match="cannot leave out"):
            fit_table(x, event, time, without=(bad,))


def test_fit_refuses_too_few_deaths() -> None:
    x, event, time, _ = _generator_table(12, 13)
    with pytest.raises(InputError, match="too few"):
        fit_table(x, event, time)


def test_training_table_measures_the_residual_viable_volume_on_post_labels(liver_cohort: Path) -> None:
    """The residual viable volume of each training case is the "viable" class of its post-treatment
    label map: the ground truth's burden x viable fraction, up to the voxel rendering."""
    x, event, time = training_table(liver_cohort)
    table = pd.read_csv(liver_cohort / "cohort.csv", dtype={"TCIA_ID": str})
    assert list(x.columns) == list(FEATURES) and len(x) == len(table) == len(event) == len(time)
    for i, row in table.iterrows():
        truth = json.loads((liver_cohort / row["TCIA_ID"] / "truth.json").read_text())
        burden = sum(4 / 3 * math.pi * np.prod(les["radii"]) / 1000 for les in truth["lesions"])
        expected = burden * float(row["gold_viable_fraction"])
        assert math.expm1(x.loc[i, RESPONSE]) == pytest.approx(expected, rel=0.35)
        assert x.loc[i, "drugs"] == len(Protocol.parse(row["chemotherapy"]).drugs)


def _model(**coef: float) -> ResponseCox:
    zero = dict.fromkeys(FEATURES, 0.0)
    return ResponseCox({**zero, **coef}, dict(zero), {**zero, "Child-Pugh": 1.0})


def _simulation(viable_voxels: list[list[int]], shape=(6, 6, 6)) -> Simulation:
    p, t = len(viable_voxels), len(viable_voxels[0])
    labels = np.full((p, t, *shape), LABELS["liver"], dtype=np.uint8)
    for i, row in enumerate(viable_voxels):
        for j, n in enumerate(row):
            labels[i, j].reshape(-1)[:n] = LABELS["viable"]
            labels[i, j].reshape(-1)[n : n + 5] = LABELS["necrosis"]
    return Simulation(
        np.zeros(labels.shape, np.float32), labels, np.zeros((p, t)), (slice(0, 6),) * 3, np.zeros((p, 4))
    )


def test_scorer_reads_the_viable_voxels_and_the_regimen() -> None:
    """Risk = coef x features: the residual viable cm3 is the simulated labels' viable voxels x voxel
    volume; the regimen adds its drugs, more with poorer liver function; unknown Child-Pugh -> median."""
    model = _model(**{RESPONSE: 0.5, "drugs": 0.2, "drugs x Child-Pugh": 0.1, "log10 AFP": 1.0})
    scorer = ResponseRiskScorer(model, (10.0, 10.0, 10.0))  # 1 cm3 voxels
    protocols = [Protocol.parse("Cisplatin; Lipiodol"), Protocol.parse("Cisplatin; Doxorubicin; Lipiodol")]
    sim = _simulation([[3, 5], [1, 1]])
    mask = np.zeros((6, 6, 6), bool)
    risk = scorer(None, mask, sim, protocols, {"CPS": "B", "AFP": 99.0})
    assert risk.shape == (2, 2)
    expected_viable = 0.5 * np.log1p(np.array([[3, 5], [1, 1]]))
    expected_regimen = np.array([[0.2 + 0.1], [2 * (0.2 + 0.1)]])
    np.testing.assert_allclose(risk, expected_viable + expected_regimen + 2.0)  # log10(1 + 99) = 2
    unknown = scorer(None, mask, sim, protocols, None)  # Child-Pugh median (B), AFP median (0)
    np.testing.assert_allclose(unknown, expected_viable + expected_regimen)
    with pytest.raises(ValueError, match="protocols"):
        scorer(None, mask, sim, protocols[:1])


def test_model_file_round_trip_and_a_clear_error(tmp_path: Path) -> None:
    model = _model(**{RESPONSE: 0.55})
    path = model.save(tmp_path / "m.json")
    assert ResponseCox.load(path) == model
    data = json.loads(path.read_text())
    assert data["synthetic"] is True and data["features"] == list(FEATURES)
    del data["coef"][CLINICAL[0]]
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"m\.json: not a response Cox model"):
        ResponseCox.load(path)


def test_a_model_fitted_before_the_embolic_terms_scores_them_as_no_effect(tmp_path: Path) -> None:
    """The shipped liver-1 model has no embolic terms (liver-1 embolics cost nothing): it loads, and an
    embolic changes its risk only through the residual viable tumour."""
    data = _model(**{RESPONSE: 0.55}).to_dict()
    for part in ("coef", "mean", "median"):
        for term in LATER_TERMS:
            del data[part][term]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    model = ResponseCox.load(path)
    assert all(model.coef[t] == 0.0 for t in LATER_TERMS)


def test_the_survival_bundle_ships_the_default_heuristic() -> None:
    """The planner's default scorer loads from the survival bundle: a model fitted on labelled training
    cohorts whose residual viable volume raises the risk, in the bundle's voxel spacing."""
    scorer = load_heuristic(ROOT / "bundles" / "tace_survival")
    assert isinstance(scorer, ResponseRiskScorer) and scorer.name == "response_cox"
    assert scorer.model.coef[RESPONSE] > 0 and scorer.model.cases >= 60
    assert scorer.voxel_cm3 == pytest.approx(0.027)  # 3 mm voxels
    with pytest.raises(InputError, match="unknown heuristic"):
        load_heuristic(ROOT / "bundles" / "tace_survival", "nope")


def test_loss_sources_splits_the_planners_regret_between_head_and_response_model(
    prepared_liver: Path, liver_cohort: Path, tmp_path: Path
) -> None:
    """On held-out cases, the head's error (priced by the truth), the response model's (on the true response)
    and both, beside the two ceilings; the result file is written whole; a cohort pair missing is refused."""
    from oncoplan.training.planner.loss_sources import CHOOSERS, main

    out = tmp_path / "loss.json"
    bundles = Path(__file__).resolve().parents[1] / "bundles"
    args = ["--prepared", str(prepared_liver), "--cohort", str(liver_cohort), "--out", str(out)]
    assert (
        main([*args, "--dynamics", str(bundles / "tace_dynamics"), "--survival", str(bundles / "tace_survival")]) == 0
    )
    result = json.loads(out.read_text())
    assert result["synthetic"] and result["cases"] == 2 and set(result["regret_months"]) == set(CHOOSERS)
    assert all(v >= 0.0 for v in result["regret_months"].values())
    # The ideal head's point prediction prices as the image-informed oracle chooses (the same posterior draws).
    assert result["regret_months"]["ideal_head_only"] == result["regret_months"]["image_informed_oracle"]
    assert -1.0 <= result["head_within_case_spearman"] <= 1.0
    bad = ["--prepared", str(prepared_liver), str(prepared_liver), "--cohort", str(liver_cohort)]
    assert main([*bad, "--dynamics", str(bundles / "tace_dynamics"), "--survival", str(bundles / "tace_survival")]) == 2
