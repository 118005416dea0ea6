"""Fitting the planner's response Cox model (:mod:`oncoplan.planner.response_heuristic`) on synthetic
training cohorts, where the residual viable volume is measured on each case's post-treatment label map.

    python -m oncoplan.training.planner.response_fit --train COHORT [COHORT ...] --out FILE.json
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


def fit(cohorts: Sequence[str | Path]) -> ResponseCox:
    """Fit on one or more synthetic cohort folders (their cases pooled)."""
    import pandas as pd

    if not cohorts:
        raise InputError("fit: give at least one training cohort")
    parts = [training_table(c) for c in cohorts]
    x = pd.concat([p[0] for p in parts], ignore_index=True)
    event = np.concatenate([p[1] for p in parts])
    time = np.concatenate([p[2] for p in parts])
    return fit_table(x, event, time, tuple(str(c) for c in cohorts))


def fit_table(x: pd.DataFrame, event: np.ndarray, time: np.ndarray, trained_on: Sequence[str] = ()) -> ResponseCox:
    """Fit on a table with the FEATURES columns (a pandas DataFrame), events (bool) and times."""
    from oncoplan.training.tace.survival_baselines import _fit

    event = np.asarray(event, dtype=bool)
    if int(event.sum()) < 2 * len(FEATURES):
        raise InputError(f"fit: {int(event.sum())} deaths are too few for {len(FEATURES)} features")
    pipeline = _fit(x[list(FEATURES)].to_numpy(float), event, np.asarray(time, dtype=float))
    imputer, scaler, cox = (step for _, step in pipeline.steps)
    coef = cox.coef_[: len(FEATURES)] / scaler.scale_[: len(FEATURES)]
    return ResponseCox(
        {f: float(c) for f, c in zip(FEATURES, coef, strict=True)},
        {f: float(m) for f, m in zip(FEATURES, scaler.mean_[: len(FEATURES)], strict=True)},
        {f: float(m) for f, m in zip(FEATURES, imputer.statistics_, strict=True)},
        tuple(trained_on),
        len(x),
        int(event.sum()),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, nargs="+", required=True, help="synthetic training cohort folder(s)")
    parser.add_argument("--out", type=Path, required=True, help="write the fitted model (JSON) here")
    args = parser.parse_args(argv)
    try:
        model = fit(args.train)
    except (InputError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = model.save(args.out)
    print(json.dumps(model.to_dict()["hazard_ratio"], indent=1))
    print(f"wrote {path} ({model.cases} cases, {model.events} deaths)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
