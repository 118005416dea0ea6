"""Training pairs for reading the world model's own renderings: for each prepared case, the dynamics
bundle renders the post-treatment window under a few sampled protocols, and each rendering's label
map is the layout the renderer was asked to draw (`dynamics.layout_labels`, same seed), inside the
pre-treatment label map. The pairs are exact and free.

Why: the planner segments simulated scans with the assistant, which learned from real (here:
synthetic-ground-truth) post-treatment CT. The renderer paints the layout in its own style, and the
assistant's reading of it was flat across protocols (planner docs, stage ranking: 1.45 months of
regret scoring the layout vs 8.8 through rendering + segmentation). Fine-tuning the assistant on these
pairs (`bundles/tace_assistant/configs/finetune_rendered.json`) teaches it that style.

The output folder reads like a prepared cohort (`datalist.json` with ``post_image`` / ``post_label``
per pair, written last), so `data.segmentation_items` takes it unchanged, alone or beside real cases.

    python -m oncoplan.training.tace.rendered_pairs --prepared P/liver_train --out P/liver_train_rendered
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from oncoplan.errors import InputError
from oncoplan.runtime.bundles import shipped_bundles
from oncoplan.tace.actions import ACTION_BASE
from oncoplan.tace.dynamics import layout_labels, to_hu
from oncoplan.tace.world_model import WorldModel, window_around
from oncoplan.training.tace.data import load_prepared

BUNDLES = shipped_bundles()


def hu_scale(preprocessing) -> tuple[float, float, float, float]:
    """(a_min, a_max, b_min, b_max) of the preprocessing's HU scaling, to write renderings back in HU."""
    from monai.transforms import ScaleIntensityRanged

    for transform in preprocessing.transforms:
        if isinstance(transform, ScaleIntensityRanged):
            s = transform.scaler
            return float(s.a_min), float(s.a_max), float(s.b_min), float(s.b_max)
    raise InputError("the dynamics preprocessing has no ScaleIntensityRanged: cannot write renderings in HU")


def pair_labels(label_window: np.ndarray, lesion_labels: np.ndarray, patch: tuple[slice, ...]) -> np.ndarray:
    """The rendering's label map: the pre-treatment labels, with the lesion inside the rendered patch
    replaced by the layout it was drawn from (liver where it shrank away)."""
    out = label_window.astype(np.uint8).copy()
    region = out[patch]
    lesion = lesion_labels > 0
    region[lesion] = lesion_labels[lesion]
    return out


def render_pairs(
    world: WorldModel,
    preprocessing,
    entries: list[dict],
    out: Path,
    protocols: int = 3,
    action_set: Sequence[str] = ACTION_BASE,
    seed: int = 0,
) -> list[dict[str, str]]:
    """Render `protocols` random valid protocols per case (one sample each) and write image/label NIfTI
    pairs under `out`; returns the datalist entries (paths relative to `out`)."""
    import nibabel as nib
    from monai.transforms import Compose

    from oncoplan.planner.search import valid_protocols
    from oncoplan.training.tace.dynamics_eval import case_features

    space = valid_protocols(action_set)
    scale = hu_scale(preprocessing)
    # The dynamics preprocessing ends by turning the label map into the lesion mask: keep the map.
    load = Compose(preprocessing.transforms[:-1])
    world.samples = 1
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    items = []
    for index, entry in enumerate(tqdm(entries, desc="render pairs", unit="case")):
        data = load({"pre": entry["pre_image"], "label": entry["pre_label"]})
        pre, labels = data["pre"][0].numpy(), data["label"][0].numpy().astype(np.uint8)
        affine = np.asarray(data["pre"].affine, dtype=float)
        mask = labels >= 2
        if not mask.any():
            continue  # nothing to treat: no pair to learn from
        pre_window, mask_window, start = window_around(pre, mask, world.window)
        label_window, _, _ = window_around(labels, mask, world.window, fill=0)
        rng = np.random.default_rng([seed, index])
        chosen = [space[i] for i in rng.choice(len(space), size=min(protocols, len(space)), replace=False)]
        case_seed = int(rng.integers(2**31))
        # The response the planner would draw for this lesion: a head that reads the scan gets its features.
        features = case_features(preprocessing, entry, pre, mask)
        hots = np.array([p.multi_hot() for p in chosen], np.float32)
        sim = world.simulate(pre_window, mask_window, hots, case_seed, features=features)
        lesion = torch.as_tensor(mask_window[sim.patch_slices], dtype=torch.float32)[None, None]
        drawn = layout_labels(lesion, torch.as_tensor(sim.response), 1, sim.seed)
        window_affine = affine.copy()
        window_affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
        for k, protocol in enumerate(chosen):
            name = f"{entry['case_id']}_r{k}"
            image = to_hu(sim.windows[k, 0], scale)
            label = pair_labels(label_window, drawn[k], sim.patch_slices)
            nib.save(nib.Nifti1Image(image, window_affine), out / "images" / f"{name}.nii.gz")
            nib.save(nib.Nifti1Image(label, window_affine), out / "labels" / f"{name}.nii.gz")
            items.append(
                {
                    "case_id": name,
                    "source_case": str(entry["case_id"]),
                    "protocol": str(protocol),
                    "seed": case_seed,
                    "post_image": f"images/{name}.nii.gz",
                    "post_label": f"labels/{name}.nii.gz",
                }
            )
    return items


def main(argv: Sequence[str] | None = None) -> int:
    from oncoplan.planner.search import SETTINGS
    from oncoplan.training.planner.evaluate import action_set_for, add_overrides_arguments, overrides_from

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, required=True, help="a prepared cohort (training cases)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the pairs and their datalist.json")
    parser.add_argument("--protocols", type=int, default=3, help="renderings per case (one protocol each)")
    parser.add_argument("--steps", type=int, default=SETTINGS["cpu"].steps, help="DDIM steps (the planner's)")
    parser.add_argument("--action-set", choices=("full", "tcia"), default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dynamics", type=Path, default=BUNDLES / "tace_dynamics")
    parser.add_argument("--assistant", type=Path, default=BUNDLES / "tace_assistant")
    add_overrides_arguments(parser, ("dynamics",))  # e.g. '{"anchor_strength": 0.3}': the planner's sampling
    args = parser.parse_args(argv)
    if args.protocols < 1:
        raise SystemExit("error: --protocols must be at least 1")
    try:
        from oncoplan.runtime.bundles import bundle_parser

        overrides = overrides_from(args, ("dynamics",))["dynamics"]
        entries = load_prepared(args.prepared)
        world = WorldModel.from_bundles(args.dynamics, args.assistant, 1, args.steps, overrides)
        preprocessing = bundle_parser(args.dynamics, overrides=overrides).get_parsed_content("preprocessing")
        items = render_pairs(
            world, preprocessing, entries, args.out, args.protocols, action_set_for("", args.action_set), args.seed
        )
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    datalist = {"cohort": str(args.prepared), "steps": args.steps, "seed": args.seed, "data": items}
    datalist["dynamics_overrides"] = overrides
    (args.out / "datalist.json").write_text(json.dumps(datalist, indent=1))
    print(f"{len(items)} pairs from {len(entries)} cases -> {args.out / 'datalist.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
