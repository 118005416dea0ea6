"""Does the world model tell the planner's top protocols apart? A one-way ANOVA over their samples.

Each ranked protocol of a plan carries T sampled risks (one per simulated outcome). If the spread of
the protocols' mean risks is no larger than what T samples of one protocol give by chance, the
ranking is noise and the world model's pick is no better informed than the policy's prior. The F
statistic (between-protocol mean square over within-protocol mean square) measures that; its
p-value uses the F distribution with (k - 1, k (T - 1)) degrees of freedom.

Read from an evaluation's JSON (the plans' ``top`` protocols), it also scores a *gated* planner that
keeps the world model's pick when p < alpha and defers to the offline policy's top-1 otherwise:
alpha is fixed in advance (0.05), never tuned on the cases it scores.

    python -m oncoplan.planner.separation planning_evaluation.json [--alpha 0.05]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from oncoplan.stats import bootstrap_ci


def anova_f(sample_risks: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(F, p) of a one-way ANOVA over protocols, each with the same number T >= 2 of sampled risks."""
    from scipy.stats import f as f_distribution

    risks = np.asarray(sample_risks, dtype=float)
    k, t = risks.shape
    if k < 2 or t < 2:
        raise ValueError(f"need at least 2 protocols of at least 2 samples, got {k} x {t}")
    within = risks.var(axis=1, ddof=1).mean()  # mean square within protocols
    between = t * risks.mean(axis=1).var(ddof=1)  # mean square between protocols
    if within == 0:
        return (float("inf"), 0.0) if between > 0 else (0.0, 1.0)
    f = float(between / within)
    return f, float(f_distribution.sf(f, k - 1, k * (t - 1)))


def separation_text(separation: Mapping[str, float] | None) -> str:
    """One line for reports: the test's result, or why there is none."""
    if not separation:
        return "separation not tested (fewer than 2 protocols x 2 samples)"
    if separation.get("exact"):
        return (
            f"the top {separation['protocols']} protocols' {separation['samples']} samples each have one risk: "
            "no sampling noise reaches the read-out, so no test; the ranking follows the predicted responses"
        )
    return (
        f"separation of the top {separation['protocols']} protocols over {separation['samples']} samples: "
        f"ANOVA F {separation['f']:.2f}, p {separation['p']:.3f}"
    )


def separation_report(evaluation: Mapping[str, Any], alpha: float = 0.05) -> dict[str, Any]:
    """Per case: F, p, whether the gate keeps the world model; regret (months) of the world model,
    the policy's top-1 and the gated planner, with bootstrap CIs over cases."""
    rows = []
    for case in evaluation["cases"]:
        f, p = anova_f([protocol["sample_risks"] for protocol in case["plan"]["top"]])
        exact = math.isinf(f)  # no sampling noise reaches the risks: nothing to test, the world model's ranking stands
        methods = case["methods"]
        keep = exact or p < alpha
        rows.append(
            {
                "case_id": case["case_id"],
                "f": None if exact else f,
                "p": None if exact else p,
                "world_model_kept": keep,
                "world_model": methods["world_model"]["regret_months"],
                "policy_top1": methods["policy_top1"]["regret_months"],
                "gated": methods["world_model" if keep else "policy_top1"]["regret_months"],
            }
        )
    summary = {m: bootstrap_ci([r[m] for r in rows]) for m in ("world_model", "policy_top1", "gated")}
    summary["gated_minus_policy"] = bootstrap_ci([r["gated"] - r["policy_top1"] for r in rows])
    return {"synthetic": True, "alpha": alpha, "cases": rows, "summary_regret_months": summary}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evaluation", type=Path, help="planning_evaluation.json of `oncoplan evaluate tace`")
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args(argv)
    try:
        evaluation = json.loads(args.evaluation.read_text())
        report = separation_report(evaluation, args.alpha)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {args.evaluation}: not a planning evaluation with plans ({exc})", file=sys.stderr)
        return 2
    for row in report["cases"]:
        kept = "world model" if row["world_model_kept"] else "policy"
        test = "no noise, no test" if row["f"] is None else f"F {row['f']:9.2f}  p {row['p']:.3f}"
        print(f"{row['case_id']}: {test}  -> {kept:11s}  regret {row['gated']:5.1f} months")
    for name, (mean, lo, hi) in report["summary_regret_months"].items():
        print(f"{name}: {mean:.2f} [{lo:.2f}, {hi:.2f}] months")
    return 0


if __name__ == "__main__":
    sys.exit(main())
