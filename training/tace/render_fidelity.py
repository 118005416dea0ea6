"""How faithfully the world model's read-out returns what its renderer was asked to draw.

For each prepared case the dynamics bundle renders the treated lesion under every protocol of the
planner's space (one sample, one seed, so protocols differ only by their layouts), the assistant
segments each rendering, and two things are compared with the layout the renderer was conditioned
on (`dynamics.layout_labels`, the same seed):

- **read-as table**: for each compartment of the layout inside the lesion (liver where the lesion
  shrank away, viable, necrosis, Lipiodol), the share of its voxels the assistant labels liver,
  viable, necrosis or Lipiodol. A faithful pair puts ~1 on the diagonal.
- **ranking**: the Spearman correlation over the protocol space between the viable voxels the layout
  holds (what the world model means) and those the assistant reads (what the planner scores).

No ground truth is needed: it isolates rendering + reading, the step the planner's stage ranking
found losing most of the regret (planner docs).

    python -m oncoplan.training.tace.render_fidelity --prepared P/liver_val --out OUT [--limit 4]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from oncoplan.stats import bootstrap_ci
from oncoplan.tace.dynamics import layout_labels
from oncoplan.tace.labels import LABELS
from oncoplan.tace.world_model import WorldModel, window_around
from oncoplan.training.tace.dynamics_eval import spearman

COMPARTMENTS = ("liver", "viable", "necrosis", "lipiodol")  # layout labels inside the lesion, in LABELS


def read_as(layout: np.ndarray, read: np.ndarray) -> dict[str, dict[str, float]]:
    """For each layout compartment present: the share of its voxels read as each compartment."""
    table = {}
    for meant in COMPARTMENTS:
        where = layout == LABELS[meant]
        if where.any():
            table[meant] = {name: float((read[where] == LABELS[name]).mean()) for name in COMPARTMENTS}
    return table


def case_fidelity(world: WorldModel, pre_window: np.ndarray, mask_window: np.ndarray, protocols: np.ndarray, seed=0):
    """The read-as table and the viable ranking of one case over `protocols` (rows of a multi-hot matrix)."""
    samples, world.samples = world.samples, 1
    try:
        sim = world.simulate(pre_window, mask_window, protocols, seed)
    finally:
        world.samples = samples
    lesion = torch.as_tensor(mask_window[sim.patch_slices] > 0, dtype=torch.float32)[None, None]
    meant = layout_labels(lesion, torch.as_tensor(sim.response), 1, sim.seed)  # (P, *patch), 0 outside the lesion
    read = sim.labels[:, 0][(slice(None), *sim.patch_slices)]
    inside = meant > 0
    viable = LABELS["viable"]
    meant_viable = (meant == viable).reshape(len(meant), -1).sum(1)
    read_viable = ((read == viable) & inside).reshape(len(read), -1).sum(1)
    return {
        "read_as": read_as(meant[inside], read[inside]),
        "spearman_meant_vs_read": spearman(read_viable, meant_viable),
        "meant_viable_voxels": meant_viable.tolist(),
        "read_viable_voxels": read_viable.tolist(),
    }


def summarise(cases: Sequence[dict]) -> dict:
    """Mean read-as table over cases (each case weighs the same) and the ranking's mean with its CI."""
    table = {
        meant: {
            name: float(np.mean([c["read_as"][meant][name] for c in cases if meant in c["read_as"]]))
            for name in COMPARTMENTS
        }
        for meant in COMPARTMENTS
        if any(meant in c["read_as"] for c in cases)
    }
    mean, lo, hi = bootstrap_ci([c["spearman_meant_vs_read"] for c in cases])
    return {"read_as": table, "spearman_meant_vs_read": {"mean": mean, "ci95": [lo, hi]}}


def main(argv: Sequence[str] | None = None) -> int:
    from dataclasses import replace

    from oncoplan.planner.models import load_models
    from oncoplan.planner.search import SETTINGS, valid_protocols
    from oncoplan.training.planner.evaluate import (
        BUNDLES,
        action_set_for,
        add_overrides_arguments,
        overrides_from,
    )
    from oncoplan.training.tace.data import load_prepared
    from oncoplan.training.tace.dynamics_eval import model_space_case

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, required=True, help="a prepared cohort")
    parser.add_argument("--out", type=Path, required=True, help="write render_fidelity.json here")
    parser.add_argument("--limit", type=int, help="first N cases")
    parser.add_argument("--steps", type=int, help="override the DDIM steps (default: the planner's cpu settings)")
    parser.add_argument("--action-set", choices=("full", "tcia"), default="tcia", help="the protocol space")
    add_overrides_arguments(parser, ("dynamics", "assistant"))
    args = parser.parse_args(argv)
    settings = replace(SETTINGS["cpu"], **({"steps": args.steps} if args.steps else {}))
    overrides = overrides_from(args, ("dynamics", "assistant"))
    bundles = (BUNDLES / "tace_dynamics", BUNDLES / "tace_assistant", BUNDLES / "tace_survival")
    # The bundles as configured (documented results reproduce); the planner's anchoring: --*-overrides.
    world, _, prep = load_models(*bundles, overrides=overrides, settings=settings, planner_defaults=False)
    space = valid_protocols(action_set_for("", args.action_set), settings.drug_horizon, settings.embolic_horizon)
    protocols = np.array([p.multi_hot() for p in space], dtype=np.float32)
    cases = []
    for entry in load_prepared(args.prepared)[: args.limit]:
        pre, mask, _ = model_space_case(prep, entry)
        pre_window, mask_window, _ = window_around(pre, mask, world.window)
        cases.append({"case_id": str(entry["case_id"]), **case_fidelity(world, pre_window, mask_window, protocols)})
        print(json.dumps({k: cases[-1][k] for k in ("case_id", "spearman_meant_vs_read", "read_as")}), flush=True)
    report = {
        "synthetic": True,
        "protocols": len(space),
        "steps": settings.steps,
        "guidance": world.guidance,
        "overrides": overrides,
        "summary": summarise(cases),
        "cases": cases,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "render_fidelity.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
