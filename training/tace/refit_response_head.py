"""Refit the dynamics bundle's response head alone, keeping its renderer: a closed-form ridge fit on prepared
training cohorts, written as a new checkpoint of the bundle's network.

The head is what the planner's default heuristic reads (the predicted response of each protocol); the renderer
draws the images from it. A new ground truth (generator liver-2) or a head that reads the lesion's features of
the pre-treatment scan (``--response-features 4``, :mod:`oncoplan.tace.lesion_features`) needs a new head; the
renderer, conditioned on the layout the head predicts, does not. The bundle's ``train.json`` fits the same head
at the start of every training run (``network_init``); this runs that step alone, in seconds.

    python -m oncoplan.training.tace.refit_response_head --bundle bundles/tace_dynamics \\
        --train P/liver_train P/liver_train_b --response-features 4 --response-link log --alpha 1.0 --out MODEL.pt

The bundle that reads the new checkpoint must say the same ``response_features``, ``response_link`` and
``response_item_pairs`` in its ``inference.json`` (a log head's checkpoint does not load into a linear one, nor
one with item pairs into one without).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from oncoplan.errors import InputError
from oncoplan.tace.dynamics import LINKS


def refit(
    bundle: Path,
    train: Sequence[Path],
    response_features: int,
    alpha: float,
    out: Path,
    link: str = "linear",
    alpha_items: float | None = None,
    item_pairs: bool = False,
    alpha_pairs: float | None = None,
) -> dict[str, object]:
    """Fit the head on `train` (features at the bundle's voxel spacing), save the network to `out`."""
    from oncoplan.runtime.bundles import bundle_parser, compatible_weights
    from oncoplan.tace.actions import ACTION_BASE
    from oncoplan.training.tace.data import dynamics_items

    overrides = {"response_features": response_features, "response_link": link, "response_item_pairs": item_pairs}
    parser = bundle_parser(bundle, overrides=overrides)
    network = compatible_weights(parser.get_parsed_content("network_def"), parser.get_parsed_content("ckpt_path"))
    spacing = parser.get_parsed_content("pixdim") if response_features else None  # features only if read
    items = dynamics_items([str(t) for t in train], features_at=spacing)
    if len(items) < 2 * len(ACTION_BASE):
        raise InputError(
            f"{len(items)} training cases with a protocol and a post label map; need {2 * len(ACTION_BASE)}"
        )
    protocols = np.asarray([i["protocol"] for i in items], dtype=np.float64)
    responses = np.asarray([i["response"] for i in items], dtype=np.float64)
    features = np.asarray([i["features"] for i in items], dtype=np.float64) if response_features else None
    r2 = network.response_head.fit(protocols, responses, features, alpha, alpha_items, alpha_pairs)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), out)
    return {
        "cases": len(items),
        "response_features": response_features,
        "response_link": link,
        "alpha": alpha,
        "alpha_items": alpha_items,
        "item_pairs": item_pairs,
        "alpha_pairs": alpha_pairs,
        "r2_viable_train": r2,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="the dynamics bundle (its configs and weights)")
    parser.add_argument("--train", type=Path, nargs="+", required=True, help="prepared training cohorts")
    parser.add_argument("--response-features", type=int, choices=(0, 4), default=0)
    parser.add_argument(
        "--response-link", choices=LINKS, default="linear", help="how items combine on the viable share (log: multiply)"
    )
    parser.add_argument("--alpha", type=float, default=1e-2, help="ridge penalty")
    parser.add_argument(
        "--alpha-items",
        type=float,
        help="ridge penalty of each item's own effect (then --alpha is the feature interactions' and the "
        "intercept is not penalised); default: --alpha on every weight",
    )
    parser.add_argument("--item-pairs", action="store_true", help="the head also reads each pair of items given")
    parser.add_argument("--alpha-pairs", type=float, help="ridge penalty of the item pairs (default: --alpha)")
    parser.add_argument("--out", type=Path, required=True, help="the new checkpoint")
    args = parser.parse_args(argv)
    try:
        summary = refit(
            args.bundle,
            args.train,
            args.response_features,
            args.alpha,
            args.out,
            args.response_link,
            args.alpha_items,
            args.item_pairs,
            args.alpha_pairs,
        )
    except (InputError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
