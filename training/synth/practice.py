"""The synthetic physicians' practice, fitted from the real HCC-TACE-Seg table.

Real physicians do not draw a regimen independently of the patient. In the HCC-TACE-Seg table (105
patients, MD Anderson; 88 with a regimen) Child-Pugh B patients had conventional triple-drug TACE in 14 of
17 cases against 37 of 67 for Child-Pugh A, and patients on cisplatin/doxorubicin/mitomycin had higher
AFP than those on doxorubicin beads. This module fits that: a multinomial logistic regression (L2,
scikit-learn, C = `C`) of the regimen on the covariates the table and our synthetic patients share
(:data:`FEATURES`), stored in ``hcc_tace_seg_practice.json`` beside this file with the command that
reproduces it::

    python -m oncoplan.training.synth.practice --clinical ../shared/data/hcc_tace_seg/clinical.csv

The internal site's physicians draw from the fitted model. The external site's menu is the MeWM in-house
style (:data:`oncoplan.planner.prior.PRACTICE` ``external``), for which no patient table exists; it is
conditioned on the patient by the same real effect carried over to that menu: the fitted log-odds of the
multi-drug regimen over the single-drug one, per drug, tilts each external protocol by its number of
drugs (:func:`site_practice`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from oncoplan.tace.actions import Protocol

if TYPE_CHECKING:
    from oncoplan.training.synth.liver import LiverPatient

FIT_PATH = Path(__file__).with_name("hcc_tace_seg_practice.json")
FEATURES = ("child_pugh_b_or_c", "multinodular", "vascular_invasion", "log10_afp", "age_decades")
C = 1.0
# The regimens the tilt of the external menu contrasts (the table's two common ones: 3 drugs and 1).
MULTI_DRUG = "Mitomycin; Cisplatin; Doxorubicin; Lipiodol"
SINGLE_DRUG = "Doxorubicin; Lipiodol; LC Beads"


def features(cps: str, multinodular: bool, vascular_invasion: bool, afp: float, age: float) -> np.ndarray:
    """The model's inputs, in :data:`FEATURES` order (AFP ng/mL, age years; centred where it helps)."""
    return np.array(
        [
            float(cps in ("B", "C")),
            float(multinodular),
            float(vascular_invasion),
            math.log10(1.0 + max(afp, 0.0)) - 2.0,
            (age - 65.0) / 10.0,
        ]
    )


def patient_features(patient: LiverPatient) -> np.ndarray:
    return features(patient.cps, len(patient.lesions) > 1, bool(patient.vascular_invasion), patient.afp, patient.age)


def fit(clinical_csv: Path) -> dict[str, object]:
    """The regimen model fitted on the real table (rows without a regimen or a covariate are left out)."""
    from sklearn.linear_model import LogisticRegression

    from oncoplan.training.tcia_clinical import load_clinical

    table = load_clinical(clinical_csv)
    rows, labels = [], []
    for _, r in table.iterrows():
        values = (r["CPS"], r["tumor_nodul"], r["Vascular invasion"], r["AFP"], r["age"])
        if r["protocol"] is None or any(isinstance(v, float) and math.isnan(v) for v in values):
            continue
        cps, nodularity, invasion, afp, age = values
        rows.append(features(str(cps), nodularity == "multinodular", bool(invasion), float(afp), float(age)))
        labels.append(str(r["protocol"]))
    model = LogisticRegression(C=C, max_iter=5000).fit(np.array(rows), np.array(labels))
    counts = {str(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True), strict=True)}
    return {
        "source": "HCC-TACE-Seg clinical table (TCIA, DOI 10.7937/TCIA.5FNA-0924, CC BY 4.0)",
        "command": "python -m oncoplan.training.synth.practice --clinical ../shared/data/hcc_tace_seg/clinical.csv",
        "model": f"multinomial logistic regression, L2, C={C} (scikit-learn)",
        "features": list(FEATURES),
        "cases": len(labels),
        "counts": counts,
        "classes": [str(c) for c in model.classes_],
        "intercept": [round(float(v), 6) for v in model.intercept_],
        "coef": [[round(float(v), 6) for v in row] for row in model.coef_],
    }


def _load(path: Path = FIT_PATH) -> dict:
    return json.loads(path.read_text())


def internal_practice(x: np.ndarray, fitted: Mapping | None = None) -> dict[str, float]:
    """Probabilities of the real regimens for covariates `x` (:func:`features`)."""
    fitted = fitted or _load()
    logits = np.asarray(fitted["intercept"]) + np.asarray(fitted["coef"]) @ x
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return {str(Protocol.parse(c)): float(v) for c, v in zip(fitted["classes"], p, strict=True)}


def drug_tilt(x: np.ndarray, fitted: Mapping | None = None) -> float:
    """The covariates' push per drug: the fitted log-odds of the 3-drug over the 1-drug regimen, less its
    value at the table's reference patient (all features 0), divided by the 2 drugs between them."""
    fitted = fitted or _load()
    classes = list(fitted["classes"])
    coef = np.asarray(fitted["coef"])
    a, b = classes.index(MULTI_DRUG), classes.index(SINGLE_DRUG)
    return float((coef[a] - coef[b]) @ x) / 2.0


def site_practice(site: str, patient: LiverPatient) -> dict[str, float]:
    """The site's protocol probabilities for `patient` (str(Protocol) -> probability, summing to 1)."""
    from oncoplan.planner.prior import PRACTICE

    x = patient_features(patient)
    if site == "internal":
        return internal_practice(x)
    if site not in PRACTICE:
        raise ValueError(f"unknown site {site!r}; expected internal or external")
    tilt = drug_tilt(x)
    table = {
        str(Protocol.parse(k)): w * math.exp(tilt * len(Protocol.parse(k).drugs)) for k, w in PRACTICE[site].items()
    }
    norm = sum(table.values())
    return {k: w / norm for k, w in table.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clinical", type=Path, required=True, help="HCC-TACE-Seg clinical.csv")
    parser.add_argument("--out", type=Path, default=FIT_PATH)
    args = parser.parse_args(argv)
    try:
        fitted = fit(args.clinical)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from oncoplan.fsio import atomic_path

    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(fitted, indent=1) + "\n")
    print(f"fitted on {fitted['cases']} cases: {fitted['counts']} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
