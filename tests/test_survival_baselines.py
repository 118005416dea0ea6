"""Cox survival baselines: real HCC-TACE-Seg table (cross-validated) and synthetic liver cohorts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw
from sksurv.util import Surv

from oncoplan.training.synth.cohort import generate_cohort
from oncoplan.training.tace import survival_baselines as SB

from .conftest import shared_file
from .helpers import cohort_rows

CLINICAL_CSV = Path(__file__).resolve().parents[1].parent / "shared/data/hcc_tace_seg/clinical.csv"
MODULE = "oncoplan.training.tace.survival_baselines"


def _contains(m: dict) -> bool:
    return m["ci_low"] <= m["estimate"] <= m["ci_high"]


def test_concordance_equals_scikit_survival() -> None:
    rng = np.random.default_rng(7)
    n = 60
    time = rng.integers(1, 25, n).astype(float)  # many tied times
    event = rng.random(n) < 0.7
    risk = rng.integers(0, 6, n).astype(float)  # many tied risks
    train_time, train_event = rng.integers(1, 30, 80).astype(float), rng.random(80) < 0.8
    train_time[0], train_event[0] = 40.0, True
    assert SB.concordance(event, time, risk) == pytest.approx(concordance_index_censored(event, time, risk)[0])
    w, tau = SB.uno_weights(train_event, train_time, event, time, 20.0)
    expected = concordance_index_ipcw(
        Surv.from_arrays(train_event, train_time), Surv.from_arrays(event, time), risk, tau=20.0
    )[0]
    assert tau == 20.0 and SB.concordance(event, time, risk, w) == pytest.approx(expected)
    # Per-fold C: only pairs within one fold, equal to C on that fold alone.
    folds = rng.integers(0, 3, (2, n))
    risks = np.stack([risk, rng.normal(size=n)])
    per_fold = SB.fold_concordance(event, time, risks, folds)
    for r in range(2):
        for f in range(3):
            sel = folds[r] == f
            ref = concordance_index_censored(event[sel], time[sel], risks[r, sel])[0]
            assert per_fold[r, f] == pytest.approx(ref)


@pytest.mark.needs_shared
def test_real_baseline(tmp_path: Path) -> None:
    shared_file("data/hcc_tace_seg/clinical.csv")
    out = tmp_path / "real"
    args = ["real", "--table", str(CLINICAL_CSV), "--out", str(out), "--repeats", "2", "--bootstrap", "200"]
    assert SB.main(args) == 0
    report = json.loads((out / "survival_baselines_real.json").read_text())
    assert report["label"] == "real"
    assert report["data"]["n"] == 105 and report["data"]["events"] == 93
    assert report["missing"]["tumor size"] == 52
    assert all(v == 0 for k, v in report["missing"].items() if k != "tumor size")
    models = {m["model"]: m for m in report["models"]}
    assert set(models) == set(SB.REAL_MODELS)
    multi = models["Cox, multivariable"]
    assert multi["harrell"]["estimate"] > 0.55 and multi["uno"]["estimate"] > 0.55
    for m in models.values():
        assert _contains(m["harrell"]) and _contains(m["uno"])
        assert m["harrell"]["bootstrap_valid"] == 200
    # Higher stage and vascular invasion mean higher hazard.
    assert models["Cox, BCLC alone"]["hazard_ratios_full_data"]["BCLC"] > 1
    assert multi["hazard_ratios_full_data"]["vascular invasion"] > 1
    assert "tumor size missing" in models["Cox, multivariable + tumor size"]["hazard_ratios_full_data"]
    md = (out / "survival_baselines_real.md").read_text()
    assert "| Cox, BCLC alone | BCLC | 105 | 93 |" in md and "Harrell C [95% CI]" in md
    assert sorted(p.name for p in out.iterdir()) == ["survival_baselines_real.json", "survival_baselines_real.md"]


def test_sampled_rows_are_the_generated_rows(liver_cohort: Path) -> None:
    """`sample:` draws the same patients as `oncoplan synth liver` (same seed), without images."""
    rows = cohort_rows(liver_cohort)
    sampled = SB.sample_rows(len(rows), seed=3)
    for row, (_, s) in zip(rows, sampled.iterrows(), strict=True):
        for col in ("TCIA_ID", "CPS", "tumor_nodul", "chemotherapy"):
            assert row[col] == str(s[col])
        for col in ("age", "Sex", "AFP", "OS", "Vascular invasion", SB.STATUS, "gold_expected_os_weeks"):
            assert float(row[col]) == pytest.approx(float(s[col]))
        truth = SB._truth_burden(liver_cohort / row["TCIA_ID"] / "truth.json")
        assert truth == pytest.approx(s["burden_cm3"])
        # The label map measures the same tumor, up to rasterisation on the small grid.
        assert SB.label_burden(liver_cohort / row["pre_labels"]) == pytest.approx(truth, rel=0.25)


def test_synthetic_baseline_on_generated_cohorts(liver_cohort: Path, tmp_path: Path) -> None:
    """End to end on two tiny image cohorts (numbers meaningless at this size; see the sampled test)."""
    test = generate_cohort("liver", tmp_path / "test", cases=2, seed=2, size="small", progress=False)
    out = tmp_path / "out"
    args = ["synthetic", "--train", str(liver_cohort), "--test", str(test), "--out", str(out), "--bootstrap", "200"]
    assert SB.main(args) == 0
    report = json.loads((out / "survival_baselines_synthetic.json").read_text())
    assert report["label"] == "synthetic"
    assert report["data"]["burden_source"] == {"train": {"labels": 2, "truth": 0}, "test": {"labels": 2, "truth": 0}}
    assert [m["model"] for m in report["models"]] == [
        "Cox, pre-treatment",
        "Cox, pre-treatment + protocol",
        SB.TRUTH_REFERENCE,
    ]
    assert report["models"][0]["n"] == {"train": 2, "test": 2}
    md = (out / "survival_baselines_synthetic.md").read_text()
    assert "SYNTHETIC" in md and "| Cox, pre-treatment | age/10, female" in md


def test_synthetic_baseline_on_sampled_cohorts() -> None:
    report = SB.run_synthetic("sample:300:0", "sample:200:1", n_boot=200)
    models = {m["model"]: m for m in report["models"]}
    pre = models["Cox, pre-treatment"]
    assert pre["harrell"]["estimate"] > 0.65 and pre["uno"]["estimate"] > 0.65
    ceiling = models[SB.TRUTH_REFERENCE]["harrell"]["estimate"]
    assert pre["harrell"]["estimate"] <= ceiling + 0.03  # no model beats the generator by much
    for m in models.values():
        assert _contains(m["harrell"]) and _contains(m["uno"])
    with_protocol = models["Cox, pre-treatment + protocol"]
    assert set(report["protocol_items"]) <= {"Mitomycin", "Cisplatin", "Doxorubicin", "LC Beads"}
    assert with_protocol["covariates"][-len(report["protocol_items"]) :] == [
        f"protocol: {a}" for a in report["protocol_items"]
    ]
    assert not math.isnan(with_protocol["harrell"]["estimate"])


def _one_line_error(rc: int, err: str, *words: str) -> None:
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0]


def test_missing_table_is_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.csv"
    cmd = [sys.executable, "-m", MODULE, "real", "--table", str(missing), "--out", str(tmp_path / "out")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    _one_line_error(out.returncode, out.stderr, str(missing))
    assert not (tmp_path / "out").exists()


def test_missing_columns_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    rows = SB.sample_rows(3, seed=0).drop(columns=["AFP"])
    rows.to_csv(cohort / "cohort.csv", index=False)
    rc = SB.main(["synthetic", "--train", str(cohort), "--test", "sample:3:1", "--out", str(tmp_path / "o")])
    _one_line_error(rc, capsys.readouterr().err, str(cohort / "cohort.csv"), "AFP")
    # No truth.json and no label map: the case cannot be given a tumor burden.
    SB.sample_rows(3, seed=0).to_csv(cohort / "cohort.csv", index=False)
    rc = SB.main(["synthetic", "--train", str(cohort), "--test", "sample:3:1", "--out", str(tmp_path / "o")])
    _one_line_error(rc, capsys.readouterr().err, "truth.json", "HCC_SI001")
    rc = SB.main(["synthetic", "--train", str(tmp_path / "none"), "--test", "sample:3:1", "--out", str(tmp_path / "o")])
    _one_line_error(rc, capsys.readouterr().err, str(tmp_path / "none" / "cohort.csv"))
    if CLINICAL_CSV.is_file():
        table = tmp_path / "clinical.csv"
        pd.read_csv(CLINICAL_CSV, encoding="utf-8-sig").drop(columns=["BCLC"]).to_csv(table, index=False)
        rc = SB.main(["real", "--table", str(table), "--out", str(tmp_path / "o")])
        _one_line_error(rc, capsys.readouterr().err, str(table), "BCLC")
    assert not (tmp_path / "o").exists()
