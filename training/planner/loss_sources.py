"""Where a world-model planner loses regret: its response head, or the response model that prices it.

On held-out synthetic cases, over the HCC-TACE-Seg action set (18 conflict-free protocols), these choosers
pick the protocol with the lowest score:

* ``head_only``: the dynamics bundle's response head predicts each protocol's residual viable tumour as a
  share of the pre-treatment lesion (its viable share times its volume ratio, as the layout read-out counts
  it; reading the lesion features of the pre-treatment scan where it reads them); the ground truth prices it
  (its linear predictor with the true viable fraction replaced by the predicted one). The head's error alone.
* ``model_only``: the true viable share, priced by the survival bundle's response Cox model (residual
  viable volume, regimen, covariates). The response model's error alone.
* ``both``: the head's viable share priced by the response Cox model: the planner's layout read-out without
  the voxel painting of the layout.
* ``ideal_head_only``, ``ideal_head_both``: as ``head_only`` and ``both`` with the head replaced by the best
  point prediction any head can make from what the images show: over the hidden profiles consistent with the
  case's visible biology (the generator's posterior, as the image-informed oracle draws them), the residual
  whose ln(1 + residual cm3), the term both the truth and the response model price, is the posterior mean of
  it. Priced by the truth it picks as the image-informed oracle does; ``head_only`` minus ``ideal_head_only`` is
  what a better head can still gain, ``ideal_head_both`` the planner's bound with its response model.
* ``population_oracle``, ``image_informed_oracle``: the two ceilings of `oncoplan evaluate tace`.

Mean regret in months (and the within-case Spearman correlation of the head's residual with the
truth's). A chooser that needs no images, no rendering and no search: seconds per cohort.

    python -m oncoplan.training.planner.loss_sources --prepared HP/a [HP/b ...] --cohort H/a [H/b ...] \\
        --dynamics DIR --survival DIR [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from oncoplan.errors import InputError

CHOOSERS = (
    "head_only",
    "model_only",
    "both",
    "ideal_head_only",
    "ideal_head_both",
    "population_oracle",
    "image_informed_oracle",
)
IDEAL_DRAWS = 300  # hidden profiles per case for the ideal head (as the image-informed oracle draws)


def _ideal_head(patient, space) -> np.ndarray:
    """Each protocol's residual as a perfect reader of the images would predict it for pricing: the value whose
    ln(1 + burden x residual) is that term's mean over hidden profiles drawn from the posterior given the
    visible biology (seed 0, as the oracles). The truth's linear predictor is linear in that term, so this
    point prediction ranks protocols as the image-informed oracle does."""
    import dataclasses

    from oncoplan.training.synth import liver as L

    profiles = L.posterior_profiles(patient, IDEAL_DRAWS, np.random.default_rng(0))
    patients = [dataclasses.replace(patient, profile=profile) for profile in profiles]
    burden = patient.burden_cm3
    terms = np.array([[math.log1p(burden * L.outcome(q, p).viable_fraction) for p in space] for q in patients])
    return np.expm1(terms.mean(axis=0)) / burden


def loss_sources(prepared: Sequence[Path], cohorts: Sequence[Path], dynamics: Path, survival: Path) -> dict:
    """Mean regret (months) of each of CHOOSERS over the cases of `prepared` (with their raw `cohorts`)."""
    import torch
    from scipy.stats import spearmanr

    from oncoplan.planner.response_heuristic import ResponseCox, ResponseRiskScorer
    from oncoplan.runtime.bundles import bundle_parser, with_weights
    from oncoplan.tace.actions import conflicts, protocol_space
    from oncoplan.tace.dynamics import multi_hot
    from oncoplan.training.planner.evaluate import (
        TCIA_DRUGS,
        TCIA_EMBOLICS,
        TCIA_SET,
        _cohort_rows,
        ground_truth_patient,
    )
    from oncoplan.training.synth import liver as L
    from oncoplan.training.tace.data import dynamics_items

    if len(prepared) != len(cohorts):
        raise InputError(f"give one raw cohort per prepared cohort ({len(prepared)} prepared, {len(cohorts)} raw)")
    parser = bundle_parser(dynamics)
    # Strict: a checkpoint whose head differs from the config's (link, features) is refused, not half-loaded.
    head = with_weights(parser.get_parsed_content("network_def"), parser.get_parsed_content("ckpt_path")).response_head
    spacing = parser.get_parsed_content("pixdim")
    model_file = Path(bundle_parser(survival).get_parsed_content("response_model"))
    scorer = ResponseRiskScorer(ResponseCox.load(model_file), spacing, readout="layout")
    space = [p for p in protocol_space(TCIA_DRUGS, TCIA_EMBOLICS, 2, 2) if not conflicts(p.items)]
    hots = torch.tensor([multi_hot(p) for p in space], dtype=torch.float32)
    regrets: dict[str, list[float]] = {k: [] for k in CHOOSERS}
    rhos = []
    for prep, raw in zip(prepared, cohorts, strict=True):
        rows = _cohort_rows(raw)
        for item in dynamics_items([str(prep)], features_at=spacing):
            row = rows[str(item["case_id"])]
            patient = ground_truth_patient(raw, str(item["case_id"]), row)
            with torch.no_grad():
                response = head(hots, np.asarray(item["features"])).numpy().astype(float)
            # The residual viable tumour as a share of the pre-treatment lesion, as the layout read-out counts
            # it (`oncoplan.tace.layout.lesion_layout`): the viable share of the treated lesion times its
            # volume ratio (a lesion does not grow in the layout). The truth's viable fraction is the same.
            predicted = response[:, 0] * np.clip(response[:, 3], 0.0, 1.0)
            true = np.array([L.outcome(patient, p).viable_fraction for p in space])
            ideal = _ideal_head(patient, space)
            rhos.append(float(spearmanr(predicted, true)[0]))
            burden = patient.burden_cm3

            def priced(viable: np.ndarray, row=row, burden=burden) -> np.ndarray:  # as the planner's scorer prices
                return scorer.risk(burden * np.asarray(viable), space, burden, row)

            def truth(i: int, viable: float, patient=patient, burden=burden) -> float:
                out = L.outcome(patient, space[i])
                return out.linear_predictor + L.BETA["viable"] * (
                    math.log1p(burden * viable) - math.log1p(burden * out.viable_fraction)
                )

            scores = {
                "head_only": np.array([truth(i, predicted[i]) for i in range(len(space))]),
                "model_only": priced(true),
                "both": priced(predicted),
                "ideal_head_only": np.array([truth(i, ideal[i]) for i in range(len(space))]),
                "ideal_head_both": priced(ideal),
            }
            for name, score in scores.items():
                regrets[name].append(L.regret_weeks(patient, space[int(np.argmin(score))], space) / 4.345)
            for name, oracle in (
                ("population_oracle", L.population_protocol),
                ("image_informed_oracle", L.image_informed_protocol),
            ):
                regrets[name].append(L.regret_weeks(patient, oracle(patient, space), space) / 4.345)
    if not rhos:
        raise InputError(f"{', '.join(map(str, prepared))}: no case with a protocol and a post-treatment label map")
    return {
        "synthetic": True,
        "cases": len(rhos),
        "action_set": list(TCIA_SET),
        "dynamics": str(dynamics),
        "survival": str(survival),
        "regret_months": {k: round(float(np.mean(v)), 3) for k, v in regrets.items()},
        "head_within_case_spearman": round(float(np.nanmean(rhos)), 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, nargs="+", required=True, help="prepared held-out cohorts")
    parser.add_argument("--cohort", type=Path, nargs="+", required=True, help="their raw cohorts, in the same order")
    parser.add_argument("--dynamics", type=Path, required=True, help="dynamics bundle (its response head)")
    parser.add_argument("--survival", type=Path, required=True, help="survival bundle (its response Cox model)")
    parser.add_argument("--out", type=Path, help="also write the result here (JSON)")
    args = parser.parse_args(argv)
    try:
        result = loss_sources(args.prepared, args.cohort, args.dynamics, args.survival)
    except (InputError, OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1)
    if args.out:
        from oncoplan.fsio import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
