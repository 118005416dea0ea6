"""Where the shipped bundles are, and a bundle's network with its weights from the bundle's own config
(the single source of truth)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from oncoplan.errors import InputError

if TYPE_CHECKING:
    import torch

LOG = logging.getLogger(__name__)
CTV_BUNDLE = "ctv_llmseg"
TACE_BUNDLES = {"assistant": "tace_assistant", "dynamics": "tace_dynamics", "survival": "tace_survival"}
BUNDLES_ENV = "ONCOPLAN_BUNDLES"


def shipped_bundles() -> Path:
    """The folder of the bundles OncoPlan ships: $ONCOPLAN_BUNDLES when set, else the package's own
    `oncoplan.bundles` data (the `bundles/` folder of a checkout, or of an installed wheel)."""
    if os.environ.get(BUNDLES_ENV):
        return Path(os.environ[BUNDLES_ENV])
    import oncoplan.bundles

    return Path(oncoplan.bundles.__file__).parent


def trt_args(bundle_dir: str | Path) -> dict:
    """The TensorRT arguments the bundle declares in configs/inference_trt.json (precision, the batch
    profile), which the apps' TensorRT path uses as `monai.bundle run` with that config does; {} without one."""
    path = Path(bundle_dir) / "configs" / "inference_trt.json"
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()).get("trt_args", {}))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a JSON config ({exc})") from None


def bundle_path(model_path: str | Path | None, name: str) -> Path:
    """The bundle under -m MODELS: MODELS itself, MODELS/<name>, or the shipped default."""
    given = [Path(model_path), Path(model_path) / name] if model_path else []
    for candidate in [*given, shipped_bundles() / name]:
        if (candidate / "configs" / "inference.json").is_file():
            return candidate
    raise InputError(f"{model_path or shipped_bundles()}: no MONAI bundle {name!r} (configs/inference.json) found")


def bundle_parser(bundle_dir: str | Path, config: str = "inference.json", overrides: dict | None = None):
    """The bundle's config parsed with `bundle_root` set and `overrides` applied."""
    from monai.bundle import ConfigParser

    bundle = Path(bundle_dir)
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / config)
    parser.update({"bundle_root": str(bundle), **(overrides or {})})
    return parser


def checkpoint_state(ckpt: str | Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The state dict in `ckpt`: a CheckpointSaver file ({"model": state}) or a bare state dict."""
    import torch  # here, not at the top: finding the shipped bundles must not import torch (CLI start-up)

    state = torch.load(ckpt, map_location=device, weights_only=True)
    return state.get("model", state) if isinstance(state, dict) else state


def with_weights(network: torch.nn.Module, ckpt: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """`network` with the weights of `ckpt` (see `checkpoint_state`)."""
    network.load_state_dict(checkpoint_state(ckpt, device))
    return network


def load_network(parser, key: str = "network") -> torch.nn.Module:
    """`key` from the parsed config with the checkpoint at `ckpt_path` loaded, in eval mode."""
    network = parser.get_parsed_content(key)
    return with_weights(network, parser.get_parsed_content("ckpt_path"), parser.get_parsed_content("device")).eval()


def initial_weights(network: torch.nn.Module, ckpt: str | Path | None, compatible: bool = False) -> torch.nn.Module:
    """`network` with the weights of `ckpt` when one is given: a train config's `init_ckpt` continues or
    fine-tunes from earlier weights instead of from scratch. `compatible`: `ckpt` is from a related
    architecture (see `compatible_weights`)."""
    if not ckpt:
        return network
    return compatible_weights(network, ckpt) if compatible else with_weights(network, ckpt)


def compatible_weights(network: torch.nn.Module, ckpt: str | Path) -> torch.nn.Module:
    """Warm start from a checkpoint of a related architecture: every tensor whose name and shape match
    is copied (MONAI's `copy_model_state`); where only the input-channel dimension grew (an input conv
    with new conditions), the old channels are copied and the new ones zeroed, so the network starts
    as the old one and learns the rest."""
    import torch
    from monai.networks.utils import copy_model_state

    old = checkpoint_state(ckpt)
    _, copied, _ = copy_model_state(network, old, inplace=True)
    state = network.state_dict()
    grown = {}
    for name, tensor in state.items():
        source = old.get(name)
        if (
            source is not None
            and source.dim() == tensor.dim() > 1
            and source.shape[1] < tensor.shape[1]
            and source.shape[:1] + source.shape[2:] == tensor.shape[:1] + tensor.shape[2:]
        ):
            grown[name] = torch.zeros_like(tensor)
            grown[name][:, : source.shape[1]] = source
    network.load_state_dict({**state, **grown})
    LOG.info("warm start from %s: %d of %d tensors", ckpt, len(copied) + len(grown), len(state))
    return network
