"""How well the protocol alone predicts the treated tumor, from the same training data as the dynamics model.

A reference for the dynamics model's protocol-sensitivity score: a ridge regression from the
protocol's multi-hot vector to the viable share of the post-treatment lesion *as the training
cases' post-treatment label maps show it* (no hidden ground truth used for fitting), scored like
the dynamics model: per held-out case, the Spearman correlation between predicted and true viable
fractions over the same `k` protocols (`dynamics_eval.candidate_protocols`). If this probe ranks
protocols well and the dynamics model does not, the data carries the protocol's effect and the
generative model is what fails to learn it. Synthetic cohorts only (the scoring needs truth.json).

    python -m oncoplan.training.tace.response_probe --train P/liver_train P/liver_train_b \
        --eval P/liver_heldout_int [--k 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from oncoplan.stats import bootstrap_ci
from oncoplan.tace.dynamics import fit_ridge, multi_hot, predict
from oncoplan.training.synth import liver as L
from oncoplan.training.tace.data import dynamics_items, load_prepared
from oncoplan.training.tace.dynamics_eval import candidate_protocols, ground_truth


def training_pairs(sources: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """(multi-hot protocol, viable share of the post-treatment lesion) for every dynamics training case:
    the pairs the dynamics model's response head fits, its viable-share column."""
    items = dynamics_items(list(sources))
    return np.asarray([i["protocol"] for i in items]), np.asarray([i["response"][0] for i in items])


def score(weights: np.ndarray, prepared: str | Path, k: int = 8) -> dict[str, object]:
    """Per-case Spearman of the probe's ranking against the truth, summarised like the dynamics report."""
    prepared = Path(prepared)
    rhos = []
    for entry in load_prepared(prepared):
        patient = ground_truth(prepared, entry, None)
        protocols = candidate_protocols(patient, k)
        truth = [L.outcome(patient, p).viable_fraction for p in protocols]
        rhos.append(float(spearmanr(predict(weights, np.asarray([multi_hot(p) for p in protocols])), truth).statistic))
    return {
        "n_cases": len(rhos),
        "spearman_mean": list(bootstrap_ci(rhos)),
        "cases_above_0_5": sum(r > 0.5 for r in rhos),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", nargs="+", required=True, help="prepared training cohorts")
    parser.add_argument("--eval", nargs="+", required=True, help="prepared held-out cohorts (synthetic)")
    parser.add_argument("--k", type=int, default=8, help="protocols per case")
    parser.add_argument("--out", type=Path, help="write response_probe.json here")
    args = parser.parse_args(argv)
    x, y = training_pairs(args.train)
    weights = fit_ridge(x, y)
    r2 = 1.0 - float(((predict(weights, x) - y) ** 2).mean() / y.var())
    report = {"train_cases": len(y), "train_r2": r2, "eval": {str(p): score(weights, p, args.k) for p in args.eval}}
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "response_probe.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
