"""The planner's models, loaded from the three TACE bundles as the app and the evaluation both use them:
the world model (dynamics + assistant), the heuristic that scores its outcomes, and the planner's
defaults over the bundles' own configs."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oncoplan.errors import InputError
from oncoplan.planner.search import SETTINGS, SearchSettings
from oncoplan.runtime.bundles import TACE_BUNDLES, shipped_bundles

log = logging.getLogger(__name__)
# What the planner changes over a TACE bundle's inference.json lives in the bundle itself, as a config
# overlay: `python -m monai.bundle run --config_file "['configs/inference.json','configs/planner.json']"`
# runs the network as the planner does (tace_dynamics: anchor_strength; tace_assistant: model_name).
PLANNER_CONFIG = "planner.json"
HEURISTICS = ("response_cox", "survival_network", "response_cox_layout")
# The planner's score: the response Cox model on the world model's layout (training/planner/docs/README.md:
# on held-out cases it ranks protocols far better than on the segmented rendering, `response_cox`).
DEFAULT_HEURISTIC = "response_cox_layout"


def planner_config(role: str, path: Path | None = None) -> dict[str, Any]:
    """The planner overlay of the `role` bundle at `path` (default: the shipped one); {} if it has none."""
    bundle = Path(path) if path is not None else shipped_bundles() / TACE_BUNDLES[role]
    overlay = bundle / "configs" / PLANNER_CONFIG
    if not overlay.is_file():
        return {}
    try:
        raw = json.loads(overlay.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{overlay}: not a JSON config ({exc})") from None
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def planner_overrides(
    bundle: str,
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
    defaults: bool = True,
    path: Path | None = None,
) -> dict[str, Any]:
    """A bundle's config overrides for the planner: `base`, then the bundle's own planner overlay
    (configs/planner.json of the bundle at `path`, the shipped one by default; unless `defaults` is
    false), then `overrides`. A weights file named there that the bundle lacks (a site's own bundle,
    trained without the fine-tune) is dropped with a warning."""
    planner = planner_config(bundle, path) if defaults else {}
    name = planner.get("model_name")
    if name and path is not None and not (Path(path) / "models" / name).is_file():
        log.warning("%s has no models/%s: the planner uses the bundle's own default weights", path, name)
        del planner["model_name"]
    return {**(base or {}), **planner, **dict(overrides or {})}


def load_models(
    dynamics: Path,
    assistant: Path,
    survival: Path,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    settings: SearchSettings = SETTINGS["cpu"],
    device: str | None = None,
    heuristic: str = DEFAULT_HEURISTIC,
    planner_defaults: bool = True,
):
    """(world model, risk scorer, dynamics preprocessing) from the three bundles (with
    :func:`planner_config` under `overrides` unless `planner_defaults` is false: the
    bundles as their configs say), on `device`
    (default: the first CUDA device if there is one, else the CPU). `heuristic` picks the scorer from
    the survival bundle: ``response_cox`` (its ``response_model``, :mod:`.response_heuristic`) or
    ``survival_network`` (its network, the paper's B.4, :mod:`.heuristic`).

    Checks that each checkpoint exists and that the three bundles share one voxel spacing.
    """
    import torch

    from oncoplan.runtime.bundles import bundle_parser
    from oncoplan.tace.world_model import WorldModel

    device = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    place = {"device": f"$torch.device('{device}')"}  # every network of the world model on one device
    paths = {"dynamics": dynamics, "assistant": assistant, "survival": survival}
    over = {k: planner_overrides(k, (overrides or {}).get(k), place, planner_defaults, p) for k, p in paths.items()}
    parsers = {}
    for name, bundle in paths.items():
        if not (Path(bundle) / "configs" / "inference.json").exists():
            raise InputError(f"{bundle}: not a bundle (no configs/inference.json)")
        parsers[name] = bundle_parser(bundle, overrides=over[name])
        ckpt = Path(parsers[name].get_parsed_content("ckpt_path"))
        if not ckpt.exists():
            raise InputError(f"{ckpt}: no {name} weights; train the bundle or give --{name} / ckpt_path")
    spacing = {n: tuple(float(v) for v in p.get_parsed_content("pixdim")) for n, p in parsers.items()}
    if len(set(spacing.values())) != 1:
        raise InputError(f"the bundles disagree on voxel spacing: {spacing}")
    scorer = load_heuristic(survival, heuristic, over["survival"])  # before the networks: an unknown name fails fast
    world = WorldModel.from_bundles(
        dynamics, assistant, settings.samples, settings.steps, over["dynamics"], over["assistant"]
    )
    return world, scorer, parsers["dynamics"].get_parsed_content("preprocessing")


def load_heuristic(survival: Path, heuristic: str = "response_cox", overrides: Mapping[str, Any] | None = None):
    """The planner's scorer from the survival bundle: its ``response_model`` on the segmented
    simulations (``response_cox``, MeWM's read-out) or on the world model's predicted layout
    (``response_cox_layout``, the planner's default), or its network (``survival_network``)."""
    from oncoplan.planner.heuristic import RiskScorer
    from oncoplan.planner.response_heuristic import ResponseRiskScorer
    from oncoplan.runtime.bundles import bundle_parser

    if heuristic not in HEURISTICS:
        raise InputError(f"unknown heuristic {heuristic!r}; choose {', '.join(HEURISTICS)}")
    if heuristic == "survival_network":
        return RiskScorer.from_bundle(survival, dict(overrides or {}))
    parser = bundle_parser(survival, overrides=dict(overrides or {}))
    pixdim = parser.get_parsed_content("pixdim")
    readout = "layout" if heuristic == "response_cox_layout" else "segmentation"
    return ResponseRiskScorer.from_file(parser.get_parsed_content("response_model"), pixdim, readout)
