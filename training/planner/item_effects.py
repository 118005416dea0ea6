"""Which action each stage of the planner gets wrong: from a `stage_ranking` run, every pair of
protocols of a case that differ by one item (A and A + item, both in the case's valid space), the
true change in expected overall survival against the change each stage's score predicts (synthetic
cohorts only). A stage *agrees* on a pair when its score (lower is better) moves opposite to the
true OS. A world model that under-credits an item shows it as low agreement on that item's row.

    python -m oncoplan.training.planner.item_effects STAGE_RANKING.json [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from oncoplan.tace.actions import Protocol


def item_pairs(space: Sequence[str]) -> list[tuple[str, int, int]]:
    """(item, index of A, index of A + item) over a protocol space."""
    index = {frozenset(Protocol.parse(p).items): i for i, p in enumerate(space)}
    pairs = []
    for items, i in index.items():
        for item in items:
            j = index.get(items - {item})
            if j is not None:
                pairs.append((item, j, i))
    return pairs


def item_effects(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per item: pairs, true OS change (weeks, with - without), and per stage its mean score change
    and the share of pairs where it moves the right way."""
    found: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for case in report["cases"]:
        os_weeks = np.asarray(case["expected_os_weeks"], dtype=float)
        scores = {k: np.asarray(v, dtype=float) for k, v in case["scores"].items()}
        for item, without, with_ in item_pairs(case["space"]):
            d_os = os_weeks[with_] - os_weeks[without]
            found[item]["os"].append(d_os)
            for stage, s in scores.items():
                d = s[with_] - s[without]
                found[item][stage].append(d)
                found[item][f"{stage}:agree"].append(float(np.sign(d) == -np.sign(d_os)))
    out = {}
    for item, values in sorted(found.items()):
        stages = [k for k in values if k != "os" and not k.endswith(":agree")]
        out[item] = {
            "pairs": len(values["os"]),
            "true_os_change_weeks": float(np.mean(values["os"])),
            "true_os_better_share": float(np.mean(np.asarray(values["os"]) > 0)),
            "stages": {
                s: {"mean_change": float(np.mean(values[s])), "agreement": float(np.mean(values[f"{s}:agree"]))}
                for s in stages
            },
        }
    return out


def markdown(effects: Mapping[str, Mapping[str, Any]], source: str) -> str:
    stages = list(next(iter(effects.values()))["stages"]) if effects else []
    lines = [
        f"Item effects (SYNTHETIC) from `{source}`: pairs of protocols differing by one item; agreement = share of"
        " pairs where the stage's score (lower is better) moves opposite to the true expected OS.",
        "",
        "| item | pairs | true OS change (weeks) | OS better with it | " + " | ".join(stages) + " |",
        "|---|---|---|---|" + "---|" * len(stages),
    ]
    for item, e in effects.items():
        agree = " | ".join(f"{e['stages'][s]['agreement']:.0%}" for s in stages)
        lines.append(
            f"| {item} | {e['pairs']} | {e['true_os_change_weeks']:+.1f} | {e['true_os_better_share']:.0%} | {agree} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m oncoplan.training.planner.item_effects", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("stage_ranking", type=Path, help="stage_ranking.json of `python -m ...planner.stage_ranking`")
    ap.add_argument("--out", type=Path, help="write item_effects.json and .md here")
    args = ap.parse_args(argv)
    try:
        effects = item_effects(json.loads(args.stage_ranking.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: {args.stage_ranking}: not a stage_ranking report ({exc})", file=sys.stderr)
        return 2
    md = markdown(effects, str(args.stage_ranking))
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "item_effects.json").write_text(json.dumps({"synthetic": True, "items": effects}, indent=1))
        (args.out / "item_effects.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
