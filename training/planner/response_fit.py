"""Fitting the planner's response Cox model (:mod:`oncoplan.planner.response_heuristic`) on synthetic
training cohorts, where the residual viable volume is measured on each case's post-treatment label map.

    python -m oncoplan.training.planner.response_fit --train COHORT [COHORT ...] --out FILE.json \
        [--without "drugs x Child-Pugh" "embolics x Child-Pugh"]

``--without`` leaves terms out of the fit (their coefficient 0): on a few hundred training cases, most of them
Child-Pugh A, the Child-Pugh interactions of the regimen are barely identified, and their noise moves the
price of each drug and embolic that the planner weighs (training/planner/docs/README.md, issue 34).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from oncoplan.errors import InputError
from oncoplan.planner.response_heuristic import CLINICAL, FEATURES, RESPONSE, ResponseCox, regimen_features

if TYPE_CHECKING:
    import pandas as pd


def training_table(cohort: str | Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(features DataFrame, event, time in weeks) of one synthetic cohort folder; the residual viable
    volume is measured on each case's post-treatment label map (``post_labels`` of ``cohort.csv``)."""
    import pandas as pd

    from oncoplan.training.tace.survival_baselines import label_burden, load_synthetic

    cohort = Path(cohort)
    data = load_synthetic(cohort)
    table = pd.read_csv(cohort / "cohort.csv", dtype={"TCIA_ID": str}, keep_default_na=False)
    post = dict(zip(table["TCIA_ID"].astype(str), table.get("post_labels", pd.Series(dtype=str)), strict=False))
    rows = []
    for case_id, protocol in zip(data.x.index, data.protocols, strict=True):
        label = cohort / str(post.get(str(case_id), "") or "")
        if not label.is_file():
            raise InputError(f"{cohort / 'cohort.csv'}: case {case_id} has no post-treatment label map")
        x = data.x.loc[case_id]
        rows.append(
            {
                RESPONSE: math.log1p(label_burden(label, ("viable",))),
                **regimen_features(protocol, float(x["Child-Pugh"])),
                **{name: float(x[name]) for name in CLINICAL},
            }
        )
    return pd.DataFrame(rows, columns=list(FEATURES)), data.event, data.time


def fit(cohorts: Sequence[str | Path], without: Sequence[str] = ()) -> ResponseCox:
    """Fit on one or more synthetic cohort folders (their cases pooled); `without`: terms left out (coef 0)."""
    import pandas as pd

    if not cohorts:
        raise InputError("fit: give at least one training cohort")
    parts = [training_table(c) for c in cohorts]
    x = pd.concat([p[0] for p in parts], ignore_index=True)
    event = np.concatenate([p[1] for p in parts])
    time = np.concatenate([p[2] for p in parts])
    return fit_table(x, event, time, tuple(str(c) for c in cohorts), without)


def fit_table(
    x: pd.DataFrame,
    event: np.ndarray,
    time: np.ndarray,
    trained_on: Sequence[str] = (),
    without: Sequence[str] = (),
) -> ResponseCox:
    """Fit on a table with the FEATURES columns (a pandas DataFrame), events (bool) and times; the terms in
    `without` are left out of the fit (coefficient 0, mean and median from the table)."""
    from oncoplan.training.tace.survival_baselines import _fit

    unknown = [t for t in without if t not in FEATURES or t == RESPONSE]
    if unknown:
        raise InputError(f"fit: cannot leave out {', '.join(map(repr, unknown))}; terms: {', '.join(FEATURES[1:])}")
    used = [f for f in FEATURES if f not in without]
    event = np.asarray(event, dtype=bool)
    if int(event.sum()) < 2 * len(used):
        raise InputError(f"fit: {int(event.sum())} deaths are too few for {len(used)} features")
    pipeline = _fit(x[used].to_numpy(float), event, np.asarray(time, dtype=float))
    imputer, scaler, cox = (step for _, step in pipeline.steps)
    coef = dict(zip(used, cox.coef_[: len(used)] / scaler.scale_[: len(used)], strict=True))
    left = x[list(without)].astype(float)  # pandas skips NaN, as the imputer and scaler do
    mean = dict(zip(used, scaler.mean_[: len(used)], strict=True)) | dict(left.mean())
    median = dict(zip(used, imputer.statistics_[: len(used)], strict=True)) | dict(left.median())
    return ResponseCox(
        {f: float(coef.get(f, 0.0)) for f in FEATURES},
        {f: float(mean[f]) for f in FEATURES},
        {f: float(median[f]) for f in FEATURES},
        tuple(trained_on),
        len(x),
        int(event.sum()),
        tuple(without),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, nargs="+", required=True, help="synthetic training cohort folder(s)")
    parser.add_argument("--out", type=Path, required=True, help="write the fitted model (JSON) here")
    parser.add_argument("--without", nargs="+", default=[], metavar="TERM", help="terms left out of the fit (coef 0)")
    args = parser.parse_args(argv)
    try:
        model = fit(args.train, args.without)
    except (InputError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = model.save(args.out)
    print(json.dumps(model.to_dict()["hazard_ratio"], indent=1))
    print(f"wrote {path} ({model.cases} cases, {model.events} deaths)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
