"""Survival baselines (Cox proportional hazards, scikit-survival) for the TACE survival "heuristic" card.

MeWM (seed ``000_82e000e83fa7957b.txt``, B.4) scores treatment plans with a CNN survival model on
pre- and post-TACE CT. Before any such model is believed, the card needs to know what plain clinical
covariates already achieve. Two baselines, each written as ``<name>.json`` and ``<name>.md``:

    python -m oncoplan.training.tace.survival_baselines real --out DIR [--folds 5 --repeats 20 --seed 0]
    python -m oncoplan.training.tace.survival_baselines synthetic --train COHORT --test COHORT --out DIR

Model (both): ``CoxPHSurvivalAnalysis`` (Breslow ties) with a small ridge penalty
(``alpha = 0.1`` on z-scored covariates: a prior SD of about 3 on each log-hazard ratio per SD, i.e.
almost no shrinkage; it only keeps the Newton steps finite with rare categories such as the one
Child-Pugh C patient). Each fit is a pipeline median imputation (+ missing indicator) -> z-scoring
-> Cox, fitted on training data only. Risk = the linear predictor; concordance is that of risk with
survival.

Real: HCC-TACE-Seg clinical table
=================================
The public table (TCIA, DOI 10.7937/TCIA.5FNA-0924, CC BY 4.0; data descriptor Sci Data,
10.1038/s41597-023-01928-3): 105 patients, 93 deaths, OS in weeks -> months (``OS / 4.345``). It is
read only through :func:`oncoplan.training.tcia_clinical.load_clinical` (``OS_months``, ``event``).

Covariates: clinically established prognostic factors of HCC treated with TACE that the table holds:

``BCLC`` (ordinal A=0, B=1, C=2, D=3; 0 missing)
    The staging system that defines TACE candidacy (EASL/AASLD); combines tumor burden,
    performance status, liver function, vascular invasion and spread. The univariable baseline.
``CPS`` Child-Pugh (ordinal A=0, B=1, C=2; 0 missing)
    Liver function: decompensated cirrhosis is a competing cause of death and limits how much
    embolization the liver tolerates; liver function enters every TACE prognostic score (HAP:
    albumin and bilirubin; ART: Child-Pugh increase; ALBI grade).
``log10(1 + AFP)`` (ng/mL; 0 missing)
    Alpha-fetoprotein reflects tumor biology; AFP > 400 is a factor of CLIP and HAP and predicts
    survival after TACE. Log scale: the raw values span 1.4 to 566,530.
``Vascular invasion`` (0/1; 0 missing)
    Macrovascular invasion (incl. all 16 portal-vein thromboses of the table) is the strongest
    single adverse tumor factor (BCLC C). It is in BCLC, but only 23 of 66 BCLC-C patients have it
    (the rest are C by performance status): the model may separate the two.
``tumor_nodul`` multinodular (0/1; 0 missing)
    Nodularity/burden (BCLC B sub-staging, up-to-seven criteria, CLIP "multinodular").
``age`` per decade (0 missing)
    Conventional adjustment; its prognostic role in HCC is weak, so its coefficient is a check.

Six covariates for 93 events (about 15 events per parameter). A third model adds ``Tr_Size``
(largest tumor diameter, cm: a factor of Okuda/HAP) even though 52/105 are missing, to show what a
half-missing covariate does: it is median-imputed with a missing indicator, the median taken from
the training fold only (scikit-learn ``SimpleImputer(add_indicator=True)`` inside the pipeline; the
test fold is never seen). The JSON and the Markdown report the missing count of every covariate.
``Portal Vein Thrombosis`` (a subset of vascular invasion), CLIP and Okuda (composites of the same
factors) are left out to avoid counting one factor twice.

Evaluation: repeated stratified K-fold cross-validation (default 5 folds x 20 repeats, seeded,
stratified by event; the same splits for every model, so differences are paired). Per test fold:
Harrell's C (as ``concordance_index_censored``) and Uno's C (as ``concordance_index_ipcw``; the
censoring distribution is the Kaplan-Meier of censoring of the whole cohort: outcomes only, no
covariates, and the same weights for every fold). **Estimate = mean of the per-fold C over all
folds x repeats. 95% CI = percentile bootstrap of the out-of-fold predictions:** 1000 resamples of
patients (with replacement, seeded), each patient keeping its out-of-fold risk and its fold in every
repeat; per resample the mean per-fold C is recomputed. The interval reflects the sampling of 105
patients (the spread over folds mostly reflects 21-patient test folds, and is reported as
``per_fold_sd``); the models are not refitted per resample, so it is a little narrow. Also reported:
the C of the pooled out-of-fold linear predictors (mean and range over repeats; pooling compares
risks of different fold models, which breaks ties of a discrete score such as BCLC at random) and
the paired bootstrap difference of each model to the univariable BCLC model.

Uno's C truncation: ``tau = 60 months`` (5-year OS, within follow-up: the longest follow-up is 109
months and censoring occurs up to 102.5). In general (small synthetic cohorts) tau is lowered to the
longest time of the data the censoring distribution is estimated on, and the tau used is recorded.

Synthetic: the liver cohort of ``oncoplan synth liver``
=====================================================
Labelled "synthetic" everywhere: these rows come from the project's generator
(:mod:`oncoplan.training.synth.liver`), whose true survival model is a Weibull proportional-hazards
model in residual viable tumor, baseline burden, Child-Pugh, AFP, vascular invasion and toxicity.

A cohort is a folder written by ``oncoplan synth liver`` (``cohort.csv`` with TCIA column names, OS
in weeks) or ``sample:CASES:SEED[:SITE[:PROTOCOLS]]``: the same rows the generator would write for
that seed (same random streams, see :func:`sample_rows`), drawn without rendering any image, so that
cohorts large enough for a survival model cost seconds instead of hours.

Pre-treatment covariates: age per decade, female sex (TCIA ``Sex`` 2), Child-Pugh (ordinal),
``log10(1 + AFP)``, vascular invasion, and tumor burden ``ln(1 + cm3)``: measured on the
pre-treatment label map (``pre_labels``: voxels labelled viable, necrosis or Lipiodol x voxel volume),
else from the case's ``truth.json`` lesions (sampled rows); the source is recorded. The second model
adds the treating protocol (``chemotherapy``) multi-hot over the action base
(:meth:`oncoplan.tace.actions.Protocol.multi_hot`), keeping the items that vary in the training
cohort (Lipiodol, in every protocol, is a constant). Fit on ``--train``, evaluated on ``--test``:
Harrell's and Uno's C (censoring distribution from the training cohort, tau = 5 years = 260.7 weeks)
with a 1000-resample percentile bootstrap of test patients. A third row scores the generator's own
expected OS under the given protocol (``gold_expected_os_weeks``, no fitting). It knows the hidden
response profile, so it is the ceiling of any risk score on these data, up to the noise of the
survival draw.

``oncoplan/stats.py`` ``bootstrap_ci`` resamples a mean of per-case values; a concordance index is
a statistic of pairs, so the bootstraps here resample cases and recompute C (vectorised, in
:mod:`oncoplan.training.tace.concordance`, the one home of the C-index, checked against
scikit-survival's implementation in the tests).

Bad input (missing file, missing column, unknown category) prints one line naming the file and exits 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from oncoplan.errors import InputError
from oncoplan.tace.actions import ACTION_BASE, Protocol
from oncoplan.tace.clinical import CHILD_PUGH, WEEKS_PER_MONTH
from oncoplan.training.tace.concordance import concordance, fold_concordance, uno_weights

CLINICAL_CSV = Path(__file__).resolve().parents[2].parent / "shared/data/hcc_tace_seg/clinical.csv"
ALPHA = 0.1
TAU_MONTHS = 60.0
TAU_WEEKS = TAU_MONTHS * WEEKS_PER_MONTH
N_BOOTSTRAP = 1000
LEVEL = 0.95

BCLC_STAGE = {"Stage-A": 0, "Stage-B": 1, "Stage-C": 2, "Stage-D": 3}
NODULARITY = {"uninodular": 0, "multinodular": 1}
TUMOR_LABELS = ("viable", "necrosis", "lipiodol")

# Real table: covariate -> (source column, description).
REAL_COVARIATES: dict[str, tuple[str, str]] = {
    "BCLC": ("BCLC", "BCLC stage, ordinal A=0..D=3"),
    "Child-Pugh": ("CPS", "Child-Pugh class, ordinal A=0, B=1, C=2"),
    "log10 AFP": ("AFP", "log10(1 + AFP ng/mL)"),
    "vascular invasion": ("Vascular invasion", "macrovascular invasion 0/1"),
    "multinodular": ("tumor_nodul", "multinodular 0/1"),
    "age/10": ("age", "age in decades"),
    "tumor size": ("Tr_Size", "largest tumor diameter, cm"),
}
REAL_MODELS: dict[str, list[str]] = {
    "Cox, BCLC alone": ["BCLC"],
    "Cox, multivariable": ["BCLC", "Child-Pugh", "log10 AFP", "vascular invasion", "multinodular", "age/10"],
    "Cox, multivariable + tumor size": [
        "BCLC",
        "Child-Pugh",
        "log10 AFP",
        "vascular invasion",
        "multinodular",
        "age/10",
        "tumor size",
    ],
}
REFERENCE_MODEL = "Cox, BCLC alone"

SYNTH_PRE = ["age/10", "female", "Child-Pugh", "log10 AFP", "vascular invasion", "ln(1 + burden cm3)"]
SYNTH_COLUMNS = ("TCIA_ID", "age", "Sex", "CPS", "AFP", "Vascular invasion", "chemotherapy", "OS")
STATUS = "Death_1_StillAliveorLostToFU_0"
TRUTH_REFERENCE = "ground truth: expected OS under the given protocol (reference, not a model)"


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def make_model():
    """Median imputation (+ missing indicator) -> z-scoring -> ridge-stabilised Cox."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sksurv.linear_model import CoxPHSurvivalAnalysis

    return make_pipeline(
        SimpleImputer(strategy="median", add_indicator=True),
        StandardScaler(),
        CoxPHSurvivalAnalysis(alpha=ALPHA, ties="breslow"),
    )


def _fit(x: np.ndarray, event: np.ndarray, time: np.ndarray):
    from sksurv.util import Surv

    return make_model().fit(x, Surv.from_arrays(event, time))


def hazard_ratios(model, names: Sequence[str]) -> dict[str, float]:
    """Hazard ratio per unit of each covariate (and per missing indicator) of a fitted pipeline."""
    imputer, scaler, cox = model.steps[0][1], model.steps[1][1], model.steps[2][1]
    labels = list(names)
    if imputer.indicator_ is not None:
        labels += [f"{names[i]} missing" for i in imputer.indicator_.features_]
    coef = cox.coef_ / scaler.scale_
    return {name: round(float(math.exp(c)), 4) for name, c in zip(labels, coef, strict=True)}


def _ci(values: np.ndarray) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - LEVEL) / 2
    return float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))


def _summary(estimate: float, boot: np.ndarray, **extra: object) -> dict[str, object]:
    low, high = _ci(boot)
    return {
        "estimate": round(float(estimate), 4),
        "ci_low": round(low, 4),
        "ci_high": round(high, 4),
        "bootstrap_valid": int(np.isfinite(boot).sum()),
        **extra,
    }


# ---------------------------------------------------------------------------------------------
# Real: HCC-TACE-Seg clinical table, repeated stratified K-fold
# ---------------------------------------------------------------------------------------------


def _ordinal(values: pd.Series, mapping: dict[str, int], column: str, path: Path) -> pd.Series:
    text = values.astype("string").str.strip()
    unknown = text.notna() & ~text.isin(list(mapping))
    if unknown.any():
        pid = unknown.index[unknown][0]
        raise InputError(f"{path}: {column} of {pid} is {values[pid]!r}; expected one of {', '.join(mapping)}")
    return text.map(mapping).astype(float)


def _numeric(values: pd.Series, column: str, path: Path) -> pd.Series:
    out = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & out.isna()
    if bad.any():
        pid = bad.index[bad][0]
        raise InputError(f"{path}: {column} of {pid} is not numeric: {values[pid]!r}")
    return out.astype(float)


def real_design(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The covariates of REAL_COVARIATES from the loaded table (NaN where missing)."""
    missing = sorted({col for col, _ in REAL_COVARIATES.values()} - set(df.columns))
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    afp = _numeric(df["AFP"], "AFP", path)
    if (afp < 0).any():
        raise InputError(f"{path}: AFP of {afp.index[afp < 0][0]} is negative")
    x = pd.DataFrame(index=df.index)
    x["BCLC"] = _ordinal(df["BCLC"], BCLC_STAGE, "BCLC", path)
    x["Child-Pugh"] = _ordinal(df["CPS"], CHILD_PUGH, "CPS", path)
    x["log10 AFP"] = np.log10(1.0 + afp)
    x["vascular invasion"] = _binary(df["Vascular invasion"], "Vascular invasion", path)
    x["multinodular"] = _ordinal(df["tumor_nodul"], NODULARITY, "tumor_nodul", path)
    x["age/10"] = _numeric(df["age"], "age", path) / 10.0
    x["tumor size"] = _numeric(df["Tr_Size"], "Tr_Size", path)
    return x


def _binary(values: pd.Series, column: str, path: Path) -> pd.Series:
    out = _numeric(values, column, path)
    bad = out.notna() & ~out.isin([0, 1])
    if bad.any():
        pid = bad.index[bad][0]
        raise InputError(f"{path}: {column} of {pid} is not 0 or 1: {values[pid]!r}")
    return out


def load_real(path: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Design matrix, event (bool) and OS in months of the real table, via the project loader."""
    from oncoplan.training.tcia_clinical import load_clinical

    path = Path(path)
    try:
        df = load_clinical(path)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc).splitlines()[0]) from None
    return real_design(df, path), df["event"].to_numpy(bool), df["OS_months"].to_numpy(float)


def _bootstrap_real(
    event: np.ndarray,
    time: np.ndarray,
    oof: dict[str, np.ndarray],
    folds: np.ndarray,
    n_boot: int,
    seed: int,
    tau: float,
) -> dict[str, dict[str, np.ndarray]]:
    """Per model and resample of patients: the mean per-fold Harrell and Uno C (out-of-fold risks and
    fold membership kept with each resampled patient; models not refitted)."""
    rng = np.random.default_rng([seed, 1])
    n = len(time)
    out = {name: {"harrell": np.full(n_boot, np.nan), "uno": np.full(n_boot, np.nan)} for name in oof}
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        e, t, f = event[idx], time[idx], folds[:, idx]
        try:
            w, _ = uno_weights(e, t, e, t, tau)
        except ValueError:
            w = None
        for name, risks in oof.items():
            out[name]["harrell"][b] = np.nanmean(fold_concordance(e, t, risks[:, idx], f))
            if w is not None:
                out[name]["uno"][b] = np.nanmean(fold_concordance(e, t, risks[:, idx], f, w))
    return out


def run_real(
    path: Path = CLINICAL_CSV,
    folds: int = 5,
    repeats: int = 20,
    seed: int = 0,
    n_boot: int = N_BOOTSTRAP,
    tau: float = TAU_MONTHS,
) -> dict[str, object]:
    """Cross-validated Cox baselines on the real table (see the module doc); returns the report."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    if folds < 2 or repeats < 1 or n_boot < 1:
        raise InputError(f"--folds must be >= 2 and --repeats, --bootstrap >= 1 (got {folds}, {repeats}, {n_boot})")
    path = Path(path)
    x, event, time = load_real(path)
    if min(event.sum(), (~event).sum()) < folds:
        raise InputError(f"{path}: too few events or censored patients for {folds} stratified folds")
    splits = list(RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed).split(x, event))
    fold_of = np.zeros((repeats, len(time)), dtype=int)
    for k, (_, te) in enumerate(splits):
        fold_of[k // folds, te] = k % folds
    w_all, tau_all = uno_weights(event, time, event, time, tau)
    oof: dict[str, np.ndarray] = {}
    for name, covariates in REAL_MODELS.items():
        xm = x[covariates].to_numpy(float)
        risks = np.full((repeats, len(time)), np.nan)
        for k, (tr, te) in enumerate(splits):
            risks[k // folds, te] = _fit(xm[tr], event[tr], time[tr]).predict(xm[te])
        oof[name] = risks
    boot = _bootstrap_real(event, time, oof, fold_of, n_boot, seed, tau)

    def per_fold(name: str, metric: str) -> np.ndarray:
        return fold_concordance(event, time, oof[name], fold_of, w_all if metric == "uno" else None)

    models = []
    for name, covariates in REAL_MODELS.items():
        metrics = {}
        for metric in ("harrell", "uno"):
            fc = per_fold(name, metric)
            pooled = concordance(event, time, oof[name], w_all if metric == "uno" else None)
            extra: dict[str, object] = {
                "per_fold_sd": round(float(np.nanstd(fc, ddof=1)), 4) if fc.size > 1 else None,
                "per_fold_range": [round(float(np.nanmin(fc)), 4), round(float(np.nanmax(fc)), 4)],
                "pooled_out_of_fold_mean": round(float(np.mean(pooled)), 4),
                "pooled_out_of_fold_repeat_range": [round(float(pooled.min()), 4), round(float(pooled.max()), 4)],
            }
            if name != REFERENCE_MODEL:
                ref = float(np.nanmean(per_fold(REFERENCE_MODEL, metric)))
                low, high = _ci(boot[name][metric] - boot[REFERENCE_MODEL][metric])
                extra[f"difference_to_{REFERENCE_MODEL}"] = {
                    "estimate": round(float(np.nanmean(fc)) - ref, 4),
                    "ci_low": round(low, 4),
                    "ci_high": round(high, 4),
                }
            metrics[metric] = _summary(float(np.nanmean(fc)), boot[name][metric], **extra)
        full = _fit(x[covariates].to_numpy(float), event, time)
        models.append(
            {
                "model": name,
                "covariates": covariates,
                "n": len(time),
                "events": int(event.sum()),
                "harrell": metrics["harrell"],
                "uno": metrics["uno"],
                "hazard_ratios_full_data": hazard_ratios(full, covariates),
            }
        )
    return {
        "label": "real",
        "data": {
            "table": str(path),
            "source": "HCC-TACE-Seg clinical table (TCIA, DOI 10.7937/TCIA.5FNA-0924, CC BY 4.0; "
            "Sci Data 10.1038/s41597-023-01928-3)",
            "n": len(time),
            "events": int(event.sum()),
            "censored": int((~event).sum()),
            "time_unit": "months (OS weeks / 4.345)",
            "max_follow_up": round(float(time.max()), 1),
        },
        "covariates": {name: {"column": col, "coding": desc} for name, (col, desc) in REAL_COVARIATES.items()},
        "missing": {name: int(x[name].isna().sum()) for name in REAL_COVARIATES},
        "evaluation": {
            "scheme": f"repeated stratified K-fold ({folds} folds x {repeats} repeats, seed {seed}, by event)",
            "estimate": f"mean of the C of the {folds * repeats} test folds",
            "ci": f"{LEVEL:.0%} percentile bootstrap of the out-of-fold predictions ({n_boot} resamples of "
            "patients, each keeping its out-of-fold risk and fold per repeat; mean per-fold C recomputed; "
            "models not refitted)",
            "harrell": "Harrell's C as sksurv concordance_index_censored (vectorised, equal)",
            "uno": f"Uno's C as sksurv concordance_index_ipcw, tau = {tau_all:g} months, censoring "
            "distribution (Kaplan-Meier, outcomes only) of the whole cohort",
            "tau_months": tau_all,
            "model": f"sksurv CoxPHSurvivalAnalysis(alpha={ALPHA}, ties='breslow') after median imputation "
            "with missing indicator and z-scoring, fitted on training folds only",
            "folds": folds,
            "repeats": repeats,
            "seed": seed,
            "n_bootstrap": n_boot,
        },
        "models": models,
    }


# ---------------------------------------------------------------------------------------------
# Synthetic liver cohort: train on one cohort, test on another
# ---------------------------------------------------------------------------------------------


@dataclass
class SyntheticData:
    """One synthetic cohort as model input: covariates, protocols, outcome (weeks) and provenance."""

    source: str
    x: pd.DataFrame
    protocols: list[Protocol]
    event: np.ndarray
    time: np.ndarray
    expected_os: np.ndarray | None
    burden_source: dict[str, int] = field(default_factory=dict)


def sample_rows(cases: int, seed: int, site: str = "internal", protocols: str = "practice") -> pd.DataFrame:
    """The tabular rows `oncoplan synth liver` writes for `seed` (``write_liver.draw_clinical``, the
    draw `write_case` makes before any image), plus ``burden_cm3`` from the lesions; no image is
    rendered and no oracle is searched."""
    from oncoplan.training.synth.cohort import PROTOCOLS, SITES
    from oncoplan.training.synth.write_liver import draw_clinical

    if cases < 1:
        raise InputError(f"sample: CASES must be at least 1 (got {cases})")
    if site not in SITES or protocols not in PROTOCOLS:
        raise InputError(f"sample: site must be one of {', '.join(SITES)}, protocols one of {', '.join(PROTOCOLS)}")
    rows = []
    for index in range(cases):
        draw = draw_clinical(index, seed, site, protocols)
        case_id, patient, gold, gold_out = draw.case_id, draw.patient, draw.gold, draw.gold_outcome
        os_weeks, event = draw.os_weeks, draw.event
        rows.append(
            {
                "TCIA_ID": case_id,
                "site": site,
                "age": patient.age,
                "Sex": patient.sex,
                "CPS": patient.cps,
                "Tr_Size": patient.tr_size_cm,
                "tumor_nodul": "multinodular" if len(patient.lesions) > 1 else "uninodular",
                "Vascular invasion": patient.vascular_invasion,
                "AFP": round(patient.afp, 1),
                "chemotherapy": str(gold),
                "OS": round(os_weeks, 2),
                STATUS: event,
                "gold_expected_os_weeks": round(gold_out.expected_os_weeks, 1),
                "burden_cm3": patient.burden_cm3,
            }
        )
    return pd.DataFrame(rows)


def _truth_burden(path: Path) -> float:
    try:
        truth = json.loads(path.read_text())
        return float(sum(4.0 / 3.0 * math.pi * float(np.prod(les["radii"])) / 1000.0 for les in truth["lesions"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: no readable lesions ({type(exc).__name__}: {exc})") from None


def label_burden(path: Path, names: Sequence[str] = TUMOR_LABELS) -> float:
    """Volume (cm3) of the `names` classes (default: all tumor: viable, necrosis, Lipiodol) of a NIfTI
    label map with its legend `<name>.json`."""
    import nibabel as nib

    legend_path = path.with_name(path.name.replace(".nii.gz", ".json"))
    try:
        legend = json.loads(legend_path.read_text())
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable label map or legend ({type(exc).__name__}: {exc})") from None
    values = [int(k) for k, name in legend.items() if name in names]
    voxel_mm3 = float(np.prod(image.header.get_zooms()[:3]))
    return float(np.isin(data, values).sum()) * voxel_mm3 / 1000.0


def _cohort_burden(df: pd.DataFrame, cohort: Path, table: Path) -> tuple[np.ndarray, dict[str, int]]:
    burden, used = [], {"labels": 0, "truth": 0}
    for _, row in df.iterrows():
        label = row.get("pre_labels")
        if isinstance(label, str) and label and (cohort / label).is_file():
            burden.append(label_burden(cohort / label))
            used["labels"] += 1
            continue
        truth = cohort / str(row["TCIA_ID"]) / "truth.json"
        if not truth.is_file():
            raise InputError(f"{truth}: case {row['TCIA_ID']} of {table} has neither a pre_labels map nor truth.json")
        burden.append(_truth_burden(truth))
        used["truth"] += 1
    return np.asarray(burden, float), used


def _synthetic_data(df: pd.DataFrame, table: str, burden: np.ndarray, used: dict[str, int]) -> SyntheticData:
    path = Path(table)
    missing = [c for c in (*SYNTH_COLUMNS, STATUS) if c not in df.columns]
    if missing:
        raise InputError(f"{table}: missing column(s) {', '.join(missing)}")
    if df.empty:
        raise InputError(f"{table}: no cases")
    df = df.set_index(df["TCIA_ID"].astype(str), drop=False)
    x = pd.DataFrame(index=df.index)
    x["age/10"] = _numeric(df["age"], "age", path) / 10.0
    sex = _numeric(df["Sex"], "Sex", path)
    if (sex.notna() & ~sex.isin([1, 2])).any():
        raise InputError(f"{table}: Sex must be 1 (male) or 2 (female)")
    x["female"] = (sex == 2).astype(float).where(sex.notna())
    x["Child-Pugh"] = _ordinal(df["CPS"], CHILD_PUGH, "CPS", path)
    afp = _numeric(df["AFP"], "AFP", path)
    if (afp < 0).any():
        raise InputError(f"{table}: AFP of {afp.index[afp < 0][0]} is negative")
    x["log10 AFP"] = np.log10(1.0 + afp)
    x["vascular invasion"] = _binary(df["Vascular invasion"], "Vascular invasion", path)
    x["ln(1 + burden cm3)"] = np.log1p(burden)
    time = _numeric(df["OS"], "OS", path)
    if time.isna().any() or (time < 0).any():
        raise InputError(f"{table}: OS (weeks) missing or negative for {time.index[time.isna() | (time < 0)][0]}")
    status = _binary(df[STATUS], STATUS, path)
    if status.isna().any():
        raise InputError(f"{table}: {STATUS} missing for {status.index[status.isna()][0]}")
    protocols = []
    for pid, text in df["chemotherapy"].items():
        try:
            protocols.append(Protocol.parse(str(text)))
        except ValueError as exc:
            raise InputError(f"{table}: chemotherapy of {pid}: {exc}") from None
    expected = None
    if "gold_expected_os_weeks" in df.columns:
        expected = pd.to_numeric(df["gold_expected_os_weeks"], errors="coerce").to_numpy(float)
        if not np.isfinite(expected).all():
            expected = None
    return SyntheticData(table, x, protocols, status.to_numpy(bool), time.to_numpy(float), expected, used)


def load_synthetic(spec: str | Path) -> SyntheticData:
    """A synthetic liver cohort folder (``cohort.csv``) or ``sample:CASES:SEED[:SITE[:PROTOCOLS]]``."""
    text = str(spec)
    if text.startswith("sample:"):
        parts = text.split(":")[1:]
        try:
            cases, seed = int(parts[0]), int(parts[1])
        except (IndexError, ValueError):
            raise InputError(f"{text}: expected sample:CASES:SEED[:SITE[:PROTOCOLS]]") from None
        df = sample_rows(cases, seed, *parts[2:4])
        return _synthetic_data(df, text, df["burden_cm3"].to_numpy(float), {"truth": len(df)})
    cohort = Path(spec)
    table = cohort / "cohort.csv"
    if not table.is_file():
        raise InputError(f"{table}: cohort table not found")
    try:
        df = pd.read_csv(table, keep_default_na=False, na_values=["", "NA"])
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{table}: not a readable CSV table ({str(exc).splitlines()[0]})") from None
    missing = [c for c in (*SYNTH_COLUMNS, STATUS) if c not in df.columns]
    if missing:
        raise InputError(f"{table}: missing column(s) {', '.join(missing)}")
    burden, used = _cohort_burden(df, cohort, table)
    return _synthetic_data(df, str(table), burden, used)


def _protocol_items(train: SyntheticData) -> list[str]:
    """Action-base items that vary in the training cohort (constant ones carry no information)."""
    hot = np.asarray([p.multi_hot() for p in train.protocols])
    return [a for a, col in zip(ACTION_BASE, hot.T, strict=True) if 0 < col.sum() < len(col)]


def _with_protocol(data: SyntheticData, items: list[str]) -> pd.DataFrame:
    hot = pd.DataFrame(
        [[float(a in p.items) for a in items] for p in data.protocols], index=data.x.index, columns=items
    )
    return pd.concat([data.x[SYNTH_PRE], hot], axis=1)


def _bootstrap_test(
    event: np.ndarray, time: np.ndarray, risks: np.ndarray, weights: np.ndarray, n_boot: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Harrell and Uno C (n_boot, models) over resamples of test patients; Uno's weight of a patient
    depends only on its own outcome and the training censoring distribution, so it travels with it."""
    rng = np.random.default_rng([seed, 2])
    harrell, uno = np.full((n_boot, len(risks)), np.nan), np.full((n_boot, len(risks)), np.nan)
    for b in range(n_boot):
        idx = rng.integers(0, len(time), len(time))
        harrell[b] = concordance(event[idx], time[idx], risks[:, idx])
        uno[b] = concordance(event[idx], time[idx], risks[:, idx], weights[idx])
    return harrell, uno


def run_synthetic(
    train_spec: str | Path, test_spec: str | Path, n_boot: int = N_BOOTSTRAP, seed: int = 0, tau: float = TAU_WEEKS
) -> dict[str, object]:
    """Cox baselines fitted on the training cohort and scored on the test cohort (see the module doc)."""
    if n_boot < 1:
        raise InputError(f"--bootstrap must be at least 1 (got {n_boot})")
    train, test = load_synthetic(train_spec), load_synthetic(test_spec)
    if train.event.sum() < 1:
        raise InputError(f"{train.source}: the training cohort has no events")
    items = _protocol_items(train)
    designs = {
        "Cox, pre-treatment": (SYNTH_PRE, train.x[SYNTH_PRE], test.x[SYNTH_PRE]),
        "Cox, pre-treatment + protocol": (
            SYNTH_PRE + [f"protocol: {a}" for a in items],
            _with_protocol(train, items),
            _with_protocol(test, items),
        ),
    }
    w_test, tau_used = uno_weights(train.event, train.time, test.event, test.time, tau)
    models = []
    scored: list[tuple[str, list[str], np.ndarray, dict[str, float] | None]] = []
    for name, (names, xtr, xte) in designs.items():
        model = _fit(xtr.to_numpy(float), train.event, train.time)
        scored.append((name, names, model.predict(xte.to_numpy(float)), hazard_ratios(model, names)))
    if test.expected_os is not None:
        scored.append((TRUTH_REFERENCE, ["gold_expected_os_weeks"], -test.expected_os, None))
    risks = np.stack([risk for _, _, risk, _ in scored])
    harrell_b, uno_b = _bootstrap_test(test.event, test.time, risks, w_test, n_boot, seed)
    for k, (name, names, risk, hrs) in enumerate(scored):
        entry: dict[str, object] = {
            "model": name,
            "covariates": names,
            "n": {"train": len(train.time), "test": len(test.time)},
            "events": {"train": int(train.event.sum()), "test": int(test.event.sum())},
            "harrell": _summary(concordance(test.event, test.time, risk), harrell_b[:, k]),
            "uno": _summary(concordance(test.event, test.time, risk, w_test), uno_b[:, k]),
        }
        if hrs is not None:
            entry["hazard_ratios_train"] = hrs
        models.append(entry)
    missing = {name: int(train.x[name].isna().sum() + test.x[name].isna().sum()) for name in SYNTH_PRE}
    return {
        "label": "synthetic",
        "data": {
            "train": {"cohort": train.source, "n": len(train.time), "events": int(train.event.sum())},
            "test": {"cohort": test.source, "n": len(test.time), "events": int(test.event.sum())},
            "burden_source": {"train": train.burden_source, "test": test.burden_source},
            "time_unit": "weeks",
            "note": "SYNTHETIC data from oncoplan.training.synth.liver; not evidence about patients",
        },
        "missing": missing,
        "protocol_items": items,
        "evaluation": {
            "scheme": "fit on the training cohort, evaluate on the held-out test cohort",
            "estimate": "C on the whole test cohort",
            "ci": f"{LEVEL:.0%} percentile bootstrap over test patients ({n_boot} resamples, seed {seed})",
            "uno": f"sksurv concordance_index_ipcw, censoring distribution of the training cohort, "
            f"tau = {tau_used:g} weeks",
            "tau_weeks": tau_used,
            "model": f"sksurv CoxPHSurvivalAnalysis(alpha={ALPHA}, ties='breslow') after median imputation "
            "with missing indicator and z-scoring",
            "n_bootstrap": n_boot,
            "seed": seed,
        },
        "models": models,
    }


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _fmt(m: dict[str, object]) -> str:
    if not np.isfinite(m["estimate"]):
        return "n/a"
    return f"{m['estimate']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def markdown(report: dict[str, object]) -> str:
    """The report as a Markdown table with the notes a reader needs."""
    real = report["label"] == "real"
    ev = report["evaluation"]
    if real:
        d = report["data"]
        head = [
            f"**Real data.** Cox baselines on the {d['source']}: {d['n']} patients, {d['events']} deaths, "
            f"OS in {d['time_unit']}.",
            "",
            f"Evaluation: {ev['scheme']}. Estimate: {ev['estimate']}. CI: {ev['ci']}. "
            f"Uno's C truncated at tau = {ev['tau_months']:g} months.",
        ]
        tau = f"Uno C (tau {ev['tau_months']:g} mo)"
        n_of = lambda m: (str(m["n"]), str(m["events"]))  # noqa: E731
    else:
        d = report["data"]
        head = [
            "**SYNTHETIC data** (oncoplan synthetic liver cohort; not evidence about patients). "
            f"Train: `{d['train']['cohort']}`; test: `{d['test']['cohort']}`; OS in weeks.",
            "",
            f"Evaluation: {ev['scheme']}. CI: {ev['ci']}. Uno's C truncated at tau = {ev['tau_weeks']:g} weeks. "
            "Tumor burden (cm3) from "
            + "; ".join(
                f"{part}: " + ", ".join(f"{k} {v}" for k, v in d["burden_source"][part].items())
                for part in ("train", "test")
            )
            + " cases (labels: pre-treatment label map; truth: lesions of truth.json or of the sampled patient).",
        ]
        tau = f"Uno C (tau {ev['tau_weeks']:g} wk)"
        n_of = lambda m: (  # noqa: E731
            f"{m['n']['train']} / {m['n']['test']}",
            f"{m['events']['train']} / {m['events']['test']}",
        )
    n_head = "n" if real else "n (train / test)"
    e_head = "events" if real else "events (train / test)"
    lines = [
        *head,
        "",
        f"| model | covariates | {n_head} | {e_head} | Harrell C [95% CI] | {tau} [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for m in report["models"]:
        n, e = n_of(m)
        lines.append(
            f"| {m['model']} | {', '.join(m['covariates'])} | {n} | {e} | {_fmt(m['harrell'])} | {_fmt(m['uno'])} |"
        )
    lines.append("")
    missing = ", ".join(f"{k} {v}" for k, v in report["missing"].items())
    total = report["data"]["n"] if real else report["data"]["train"]["n"] + report["data"]["test"]["n"]
    lines.append(
        f"Missing values (of {total}): {missing}; where present, imputed with the median of the training data "
        "(fold) plus a missing indicator."
    )
    if real:
        for m in report["models"]:
            for metric, label in (("harrell", "Harrell"), ("uno", "Uno")):
                diff = m[metric].get(f"difference_to_{REFERENCE_MODEL}")
                if diff:
                    lines.append(
                        f"- {m['model']} minus {REFERENCE_MODEL}, {label} C: {diff['estimate']:+.3f} "
                        f"[{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}] (paired bootstrap)."
                    )
        lines.append(
            f"- SD of Harrell C over the {ev['folds'] * ev['repeats']} test folds: "
            + "; ".join(f"{m['model']} {m['harrell']['per_fold_sd'] or 0:.3f}" for m in report["models"])
            + ". Pooled out-of-fold Harrell C (mean over repeats): "
            + "; ".join(f"{m['model']} {m['harrell']['pooled_out_of_fold_mean']:.3f}" for m in report["models"])
            + "."
        )
        lines.append(
            "Cite the collection (DOI 10.7937/TCIA.5FNA-0924) and its data descriptor "
            "(Sci Data, 10.1038/s41597-023-01928-3) with these numbers."
        )
    else:
        lines.append(
            f"Protocol items (multi-hot, varying in the training cohort): {', '.join(report['protocol_items'])}."
        )
        lines.append(
            "The ground-truth row ranks test cases by the generator's expected OS under the given protocol "
            "(it knows the hidden response profile): the ceiling for these data, not a model."
        )
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, object], out: Path, name: str) -> tuple[Path, Path]:
    """`out/<name>.json` and `out/<name>.md`, each written to a temporary file and renamed."""
    from oncoplan.fsio import atomic_path

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: output path exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
    paths = out / f"{name}.json", out / f"{name}.md"
    for path, text in zip(paths, (json.dumps(report, indent=1) + "\n", markdown(report)), strict=True):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oncoplan.training.tace.survival_baselines", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    real = sub.add_parser("real", help="cross-validated Cox on the real HCC-TACE-Seg clinical table")
    real.add_argument("--table", type=Path, default=CLINICAL_CSV, help="clinical.csv of HCC-TACE-Seg")
    real.add_argument("--folds", type=int, default=5)
    real.add_argument("--repeats", type=int, default=20)
    real.add_argument("--name", default="survival_baselines_real", help="output file stem")
    synth = sub.add_parser("synthetic", help="Cox on a synthetic liver cohort, held-out test cohort")
    synth.add_argument("--train", required=True, help="cohort folder or sample:CASES:SEED[:SITE[:PROTOCOLS]]")
    synth.add_argument("--test", required=True, help="cohort folder or sample:CASES:SEED[:SITE[:PROTOCOLS]]")
    synth.add_argument("--name", default="survival_baselines_synthetic", help="output file stem")
    for p in (real, synth):
        p.add_argument("--out", type=Path, required=True, help="folder for <name>.json and <name>.md")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--bootstrap", type=int, default=N_BOOTSTRAP, help="bootstrap resamples")
    args = parser.parse_args(argv)
    try:
        if args.command == "real":
            report = run_real(args.table, args.folds, args.repeats, args.seed, args.bootstrap)
        else:
            report = run_synthetic(args.train, args.test, args.bootstrap, args.seed)
        paths = write_report(report, args.out, args.name)
    except (InputError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    for m in report["models"]:
        print(f"{m['model']}: Harrell C {_fmt(m['harrell'])}, Uno C {_fmt(m['uno'])}")
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
