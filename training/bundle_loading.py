"""Load a bundle's network with its weights from the bundle's own config (the single source of truth)."""

from __future__ import annotations

from pathlib import Path

import torch


def bundle_parser(bundle_dir: str | Path, config: str = "inference.json", overrides: dict | None = None):
    """The bundle's config parsed with `bundle_root` set and `overrides` applied."""
    from monai.bundle import ConfigParser

    bundle = Path(bundle_dir)
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / config)
    parser.update({"bundle_root": str(bundle), **(overrides or {})})
    return parser


def with_weights(network: torch.nn.Module, ckpt: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """`network` with the weights of `ckpt`: a CheckpointSaver file ({"model": state}) or a bare state dict."""
    state = torch.load(ckpt, map_location=device, weights_only=True)
    network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    return network


def load_network(parser, key: str = "network") -> torch.nn.Module:
    """`key` from the parsed config with the checkpoint at `ckpt_path` loaded, in eval mode."""
    network = parser.get_parsed_content(key)
    return with_weights(network, parser.get_parsed_content("ckpt_path"), parser.get_parsed_content("device")).eval()


def initial_weights(network: torch.nn.Module, ckpt: str | Path | None) -> torch.nn.Module:
    """`network` with the weights of `ckpt` when one is given: a train config's `init_ckpt` continues or
    fine-tunes from earlier weights instead of from scratch."""
    return with_weights(network, ckpt) if ckpt else network
