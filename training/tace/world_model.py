"""The MeWM world model on one case: simulate the post-treatment tumor under candidate protocols
(dynamics bundle) and measure each simulation (assistant bundle).

Everything runs in model space (RAS, the bundles' spacing, HU scaled to [-1, 1]). A window of the
assistant's ROI size is cut around the tumor; the dynamics model regenerates its central patch
for every (protocol, sample) in one batch; the assistant segments every window in one batch; the
viable-tumor fraction is measured in the treated lesion. The planner's heuristic scores the same
windows.

The renderer regenerates the whole patch but treatment changes only the lesion (it shrinks inside
its pre-treatment extent), so tumor the assistant finds elsewhere in the patch is rendering noise
(every real lesion is in the tumor mask): it becomes liver before anything reads the labels. Left in,
it outweighed the lesion on some held-out cases and the simulated fraction stopped following the
protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ..bundle_loading import bundle_parser, load_network
from .dynamics import simulate
from .preprocess import LABELS, TUMOR_LABELS, viable_fraction
from .transforms import keep_largest_organ

LESION_MARGIN = 1  # voxels around the pre-treatment tumor mask still read as lesion (registration slack)


@dataclass
class Simulation:
    """Simulated outcomes: windows (P, T, *window), label maps (P, T, *window), viable fraction (P, T)
    as the assistant segments it, and the response head's prediction per protocol (P, len(RESPONSE)),
    which the renderer drew from."""

    windows: np.ndarray
    labels: np.ndarray
    viable_fraction: np.ndarray
    patch_slices: tuple[slice, ...]
    response: np.ndarray


def window_around(volume: np.ndarray, mask: np.ndarray, size: tuple[int, ...], fill: float = -1.0):
    """Cut `size` around the centroid of `mask` from `volume` (both spatial arrays), padding with `fill`.

    Returns the window, the mask window and the window's start index in the volume (may be negative).
    """
    centre = np.round(ndimage.center_of_mass(mask)).astype(int) if mask.any() else np.array(volume.shape) // 2
    start = centre - np.asarray(size) // 2
    pad = [(int(s), int(s)) for s in size]
    padded = np.pad(volume, pad, constant_values=fill)
    padded_mask = np.pad(mask, pad, constant_values=0)
    index = tuple(slice(int(a + p[0]), int(a + p[0] + s)) for a, p, s in zip(start, pad, size, strict=True))
    return padded[index], padded_mask[index], start


class WorldModel:
    """Dynamics network + its DDIM sampler, and the assistant network; see the module doc."""

    def __init__(
        self,
        dynamics: torch.nn.Module,
        sampler,
        patch: tuple[int, ...],
        assistant: torch.nn.Module,
        window: tuple[int, ...],
        samples: int = 5,
        steps: int = 25,
        guidance: float = 1.0,
    ) -> None:
        if any(p > w for p, w in zip(patch, window, strict=True)):
            raise ValueError(f"dynamics patch {patch} is larger than the assistant window {window}")
        self.dynamics, self.sampler, self.patch = dynamics.eval(), sampler, tuple(int(v) for v in patch)
        self.assistant, self.window = assistant.eval(), tuple(int(v) for v in window)
        self.samples, self.steps, self.guidance = samples, steps, float(guidance)
        self.device = next(dynamics.parameters()).device
        # What runs the networks: the modules themselves until `accelerate` picks faster backends.
        self.dynamics_forward, self.assistant_forward = self.dynamics, self.assistant

    def accelerate(self, cache: Path, prefer: Mapping[str, Sequence[str]] | None = None) -> dict[str, str]:
        """Run both networks on the fastest backend here (see `select_backend`); returns the backend
        of each. `prefer`: the backends to consider per network ("dynamics", "assistant"), default
        all. Exports are cached in `cache`, keyed by weights and shapes."""
        from oncoplan.operators.inference_backend import (
            BACKENDS,
            dynamics_signature,
            select_backend,
            unet_signature,
        )

        order = {"dynamics": BACKENDS, "assistant": BACKENDS, **dict(prefer or {})}
        self.dynamics_forward, dyn = select_backend(
            self.dynamics,
            dynamics_signature(self.dynamics.input_channels, self.patch),
            cache,
            order["dynamics"],
            "tace_dynamics",
        )
        self.assistant_forward, ast = select_backend(
            self.assistant, unet_signature(self.window), cache, order["assistant"], "tace_assistant"
        )
        return {"dynamics": dyn, "assistant": ast}

    @classmethod
    def from_bundles(
        cls,
        dynamics_bundle: str | Path,
        assistant_bundle: str | Path,
        samples: int = 5,
        steps: int = 25,
        dynamics_overrides: dict | None = None,
        assistant_overrides: dict | None = None,
    ) -> WorldModel:
        """Both networks from their bundles' inference configs and shipped (or overridden) weights;
        the dynamics config's `guidance` sets classifier-free guidance."""
        dyn = bundle_parser(dynamics_bundle, overrides=dynamics_overrides)
        ast = bundle_parser(assistant_bundle, overrides=assistant_overrides)
        return cls(
            load_network(dyn),
            dyn.get_parsed_content("sampler"),
            tuple(dyn.get_parsed_content("roi_size")),
            load_network(ast),
            tuple(ast.get_parsed_content("roi_size")),
            samples,
            steps,
            float(dyn.get("guidance", 1.0)),
        )

    @torch.no_grad()
    def simulate(self, pre_window: np.ndarray, mask_window: np.ndarray, protocols: np.ndarray, seed: int = 0):
        """Simulate every protocol (rows of a multi-hot matrix) `samples` times and segment the results.
        The dynamics model's response head turns each protocol into the response its renderer draws."""
        lo = [(w - p) // 2 for w, p in zip(self.window, self.patch, strict=True)]
        patch = tuple(slice(a, a + p) for a, p in zip(lo, self.patch, strict=True))
        pre = torch.as_tensor(pre_window[patch], dtype=torch.float32)[None, None].to(self.device)
        mask = torch.as_tensor(mask_window[patch] > 0, dtype=torch.float32)[None, None].to(self.device)
        self.sampler.set_timesteps(self.steps)
        responses = self.dynamics.response(torch.as_tensor(protocols, dtype=torch.float32).to(self.device))
        posts = simulate(
            self.dynamics_forward,
            pre,
            mask,
            responses,
            self.sampler,
            self.samples,
            seed,
            self.guidance,
        ).cpu()
        n_protocols, samples = posts.shape[:2]
        windows = np.repeat(pre_window[None], n_protocols * samples, axis=0).astype(np.float32)
        windows[(slice(None), *patch)] = posts.reshape(n_protocols * samples, *self.patch).clamp(-1, 1).numpy()
        chunks = np.array_split(windows, max(1, len(windows) // 8))
        labels = torch.cat(
            [self.assistant_forward(torch.as_tensor(w[:, None]).to(self.device)).argmax(1).cpu() for w in chunks]
        )
        labels = labels.numpy().astype(np.uint8)
        labels = np.stack([keep_largest_organ(lab) for lab in labels])
        noise = _rendered_outside_lesion(mask_window, patch)[None] & np.isin(labels, TUMOR_LABELS)
        labels = np.where(noise, np.uint8(LABELS["liver"]), labels)
        fractions = np.array([viable_fraction(lab[patch], empty=0.0) for lab in labels]).reshape(n_protocols, samples)
        shape = (n_protocols, samples)
        return Simulation(
            windows.reshape(*shape, *self.window),
            labels.reshape(*shape, *self.window),
            fractions,
            patch,
            responses.cpu().numpy(),
        )


def _rendered_outside_lesion(mask_window: np.ndarray, patch: tuple[slice, ...]) -> np.ndarray:
    """Window voxels the renderer regenerated (`patch`) that lie outside the (dilated) tumor mask."""
    outside = np.zeros(mask_window.shape, dtype=bool)
    lesion = ndimage.binary_dilation(mask_window > 0, iterations=LESION_MARGIN)
    outside[patch] = ~lesion[patch]
    return outside
