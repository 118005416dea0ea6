"""Planner: K candidate protocols simulated by the world model in one batch vs one at a time,
same case, same models, same noise; optionally the whole plan of a generated study, by model.

    python -m tests.bench.planner [--k 8] [--samples 2] [--steps 10] [--repeats 3] [--plan [cpu,paper]]

The case is a generated small liver study, prepared as for training (3 mm); the models are the
shipped bundles. `--plan` also runs `oncoplan plan` (the settings named, cpu and paper by default) on a
full-size generated study and reports plan.json's timing per stage and per model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from oncoplan.planner.models import load_models
from oncoplan.planner.search import SETTINGS
from oncoplan.tace.actions import conflicts
from oncoplan.tace.dynamics import multi_hot
from oncoplan.tace.world_model import window_around
from oncoplan.training.planner.evaluate import BUNDLES
from oncoplan.training.synth import liver as L
from oncoplan.training.synth.cohort import generate_cohort
from oncoplan.training.tace.data import load_prepared
from oncoplan.training.tace.dynamics_eval import model_space_case
from oncoplan.training.tace.prepare import prepare_cohort

from .report import machine, median_seconds, publish, versions


def _plan_rows(root: Path, settings: list[str]) -> list[str]:
    cohort = generate_cohort("liver", root / "full", 1, seed=77, size="full", progress=False)
    study = next((cohort).glob("*/dicom/pre"))
    rows = [
        "",
        "Whole plan of a generated full-size pre-treatment study (`oncoplan plan`), seconds: by stage, then by",
        "network over the whole plan (the assistant segments the study and the top candidates' outcomes, the",
        "dynamics UNet renders those outcomes; the search renders nothing when it scores layouts) and the",
        "search's heuristic:",
        "",
        "| settings | wall | segmentation | search | outcomes | dynamics | assistant | heuristic |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in settings:
        out = root / f"plan_{name}"
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "oncoplan", "plan", "-i", str(study), "-o", str(out), "--settings", name],
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - t0
        plan = json.loads((out / "plan.json").read_text())
        st, nt, ht = plan["stage_timing_s"], plan["model_timing_s"], plan["timing_s"]["heuristic"]
        rows.append(
            f"| {name} | {wall:.0f} | {st['segmentation']:.1f} | {st['search']:.1f} | {st['outcomes']:.1f} | "
            f"{nt['dynamics']:.1f} | {nt['assistant']:.1f} | {ht:.1f} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--samples", type=int, default=SETTINGS["cpu"].samples)
    ap.add_argument("--steps", type=int, default=SETTINGS["cpu"].steps)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--plan", nargs="?", const="cpu,paper", default="", help="also time whole plans with these settings (minutes)"
    )
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    root = Path(tempfile.mkdtemp(prefix="oncoplan-bench-planner-"))
    try:
        cohort = generate_cohort("liver", root / "c", 1, seed=4242, size="small", progress=False)
        prepared = root / "p"
        prepare_cohort(cohort, prepared, spacing=(3.0, 3.0, 3.0), quiet=True)
        settings = replace(SETTINGS["cpu"], samples=args.samples, steps=args.steps)
        world, _, preprocessing = load_models(
            BUNDLES / "tace_dynamics", BUNDLES / "tace_assistant", BUNDLES / "tace_survival", None, settings
        )
        pre, mask, _ = model_space_case(preprocessing, load_prepared(prepared)[0])
        pre_w, mask_w, _ = window_around(pre, mask, world.window)
        space = [p for p in L.protocol_space(max_drugs=2, max_embolics=2) if not conflicts(p.items)]
        picks = np.random.default_rng(0).choice(len(space), args.k, replace=False)
        protocols = np.array([multi_hot(space[i]) for i in picks], dtype=np.float32)

        batched = median_seconds(lambda: world.simulate(pre_w, mask_w, protocols), args.repeats)
        single = median_seconds(
            lambda: [world.simulate(pre_w, mask_w, protocols[i : i + 1]) for i in range(args.k)], args.repeats
        )
        plan_rows = _plan_rows(root, args.plan.split(",")) if args.plan else []
    finally:
        shutil.rmtree(root, ignore_errors=True)

    speedup = single / batched
    lines = [
        f"Command: `python -m tests.bench.planner --k {args.k} --samples {args.samples} --steps {args.steps} "
        f"--repeats {args.repeats}{' --plan ' + args.plan if args.plan else ''}`  ",
        f"Case: one generated small liver study (seed 4242), prepared at 3 mm; shipped bundles; dynamics patch "
        f"{world.patch}, assistant window {world.window}; {args.samples} samples x {args.steps} DDIM steps per "
        f"protocol, of which the planner's anchored sampling (strength {world.anchor.strength}) runs the last "
        f"{world.anchor.steps_left(args.steps)}; median of {args.repeats} after a warm-up.  ",
        f"Machine: {machine()}; torch threads {torch.get_num_threads()}.  ",
        f"Versions: {versions('torch', 'monai')}.",
        "",
        "| K | one at a time | batched | speed-up | target (0.6 K) |",
        "|---|---|---|---|---|",
        f"| {args.k} | {single:.2f} s | {batched:.2f} s | {speedup:.2f}x | {0.6 * args.k:.1f}x |",
        *plan_rows,
    ]
    return publish("Planner batching", lines, write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
