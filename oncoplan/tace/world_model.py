"""The MeWM world model on one case: simulate the post-treatment tumor under candidate protocols
(dynamics bundle) and measure each simulation (assistant bundle).

Everything runs in model space (RAS, the bundles' spacing, HU scaled to [-1, 1]). A window of the
assistant's ROI size is cut around the tumor; the dynamics model regenerates its central patch
for every (protocol, sample) in one batch; the assistant segments every window in one batch (each
network call takes a micro-batch sized for the device, `default_micro_batch`); the viable-tumor
fraction is measured in the treated lesion. The planner's heuristic scores the same windows.

The renderer regenerates the whole patch but treatment changes only the lesion (it shrinks inside
its pre-treatment extent), so tumor the assistant finds elsewhere in the patch is rendering noise
(every real lesion is in the tumor mask): it becomes liver before anything reads the labels. Left in,
it outweighed the lesion on some held-out cases and the simulated fraction stopped following the
protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from scipy import ndimage

from oncoplan.runtime.bundles import bundle_parser, load_network, trt_args
from oncoplan.tace.dynamics import Anchor, simulate
from oncoplan.tace.labels import LABELS, TUMOR_LABELS, viable_fraction
from oncoplan.tace.transforms import keep_largest_organ

LESION_MARGIN = 1  # voxels around the pre-treatment tumor mask still read as lesion (registration slack)


def default_micro_batch(device: torch.device) -> int | None:
    """How many samples one network call takes on `device`: all of them on a GPU; on a CPU one per
    thread, never fewer than two. oneDNN's 3D convolutions spread a call over the batch, and beyond one
    sample per thread the activations leave the cache: on 2 cores a batch of 16 costs 2.1x per sample
    what a batch of 2 does (dynamics UNet, 32^3; the assistant 2.0x at 48^3; BENCHMARKS.md, Planner
    batching). A batch of one is 3-4x slower per sample than two at 1 or 2 threads (dynamics UNet)."""
    return None if device.type == "cuda" else max(2, torch.get_num_threads())


def micro_batched(forward: Callable[..., torch.Tensor], size: int | None) -> Callable[..., torch.Tensor]:
    """`forward` run over slices of at most `size` samples and concatenated (unchanged when `size` is
    None). Tensor arguments with the input's batch size are sliced alongside; others (a shared
    timestep) pass through."""
    if size is None:
        return forward

    def run(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        n = x.shape[0]
        if n <= size:
            return forward(x, *args, **kwargs)

        def part(v, lo: int):
            return v[lo : lo + size] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n else v

        return torch.cat(
            [
                forward(x[lo : lo + size], *(part(a, lo) for a in args), **{k: part(v, lo) for k, v in kwargs.items()})
                for lo in range(0, n, size)
            ]
        )

    return run


@dataclass
class Simulation:
    """Simulated outcomes: windows (P, T, *window), label maps (P, T, *window), viable fraction (P, T)
    as the assistant segments it, and the response head's prediction per protocol (P, len(RESPONSE)),
    which the renderer drew from; `seed`: the one the renderer drew its layouts with (a read-out of
    those layouts draws them again from it). From :meth:`WorldModel.respond` only the response, the
    patch, the seed and `samples` are there: nothing was rendered or segmented."""

    windows: np.ndarray | None
    labels: np.ndarray | None
    viable_fraction: np.ndarray | None
    patch_slices: tuple[slice, ...]
    response: np.ndarray
    seed: int = 0
    samples: int = 0  # T; taken from the renderings when there are some

    def __post_init__(self) -> None:
        if self.viable_fraction is not None:
            self.samples = int(self.viable_fraction.shape[1])


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
        micro_batch: int | Literal["auto"] | None = "auto",
        anchor: Anchor | None = None,
    ) -> None:
        if any(p > w for p, w in zip(patch, window, strict=True)):
            raise ValueError(f"dynamics patch {patch} is larger than the assistant window {window}")
        self.dynamics, self.sampler, self.patch = dynamics.eval(), sampler, tuple(int(v) for v in patch)
        self.assistant, self.window = assistant.eval(), tuple(int(v) for v in window)
        self.samples, self.steps, self.guidance = samples, steps, float(guidance)
        self.anchor = anchor or Anchor()
        self.device = next(dynamics.parameters()).device
        # Candidates are batched together; each network call takes `micro_batch` of them at a time.
        self.micro_batch = default_micro_batch(self.device) if micro_batch == "auto" else micro_batch
        # What runs the networks: the modules themselves until `accelerate` picks faster backends.
        self.backends: dict[str, Callable[..., torch.Tensor]] = {}
        self.trt_args: dict[str, dict] = {}  # each network's bundle's TensorRT arguments (from_bundles)
        self.use(dynamics=self.dynamics, assistant=self.assistant)

    def use(self, **forwards: Callable[..., torch.Tensor]) -> None:
        """Run the named networks ("dynamics", "assistant") through these callables: a backend's
        forward, or a wrapper of one (the search's timers). Each call takes `micro_batch` at a time."""
        self.backends.update(forwards)
        self.dynamics_forward = micro_batched(self.backends["dynamics"], self.micro_batch)
        self.assistant_forward = micro_batched(self.backends["assistant"], self.micro_batch)

    def accelerate(self, cache: Path, prefer: Mapping[str, Sequence[str]] | None = None) -> dict[str, str]:
        """Run both networks on the fastest backend here (see `select_backend`); returns the backend
        of each. `prefer`: the backends to consider per network ("dynamics", "assistant"), default
        `app_backends()`. Exports are cached in `cache`, keyed by weights and shapes."""
        from oncoplan.runtime.backends import (
            app_backends,
            dynamics_signature,
            select_backend,
            unet_signature,
        )

        everything = app_backends()
        order = {"dynamics": everything, "assistant": everything, **dict(prefer or {})}
        dynamics_forward, dyn = select_backend(
            self.dynamics,
            dynamics_signature(self.dynamics.input_channels, self.patch),
            cache,
            order["dynamics"],
            "tace_dynamics",
            trt_args=self.trt_args.get("dynamics"),
        )
        assistant_forward, ast = select_backend(
            self.assistant,
            unet_signature(self.window),
            cache,
            order["assistant"],
            "tace_assistant",
            trt_args=self.trt_args.get("assistant"),
        )
        self.use(dynamics=dynamics_forward, assistant=assistant_forward)
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
        the dynamics config's `guidance` sets classifier-free guidance and its `anchor` where
        sampling starts (`Anchor`)."""
        dyn = bundle_parser(dynamics_bundle, overrides=dynamics_overrides)
        ast = bundle_parser(assistant_bundle, overrides=assistant_overrides)
        world = cls(
            load_network(dyn),
            dyn.get_parsed_content("sampler"),
            tuple(dyn.get_parsed_content("roi_size")),
            load_network(ast),
            tuple(ast.get_parsed_content("roi_size")),
            samples,
            steps,
            float(dyn.get("guidance", 1.0)),
            anchor=dyn.get_parsed_content("anchor") if "anchor" in dyn else None,
        )
        world.trt_args = {"dynamics": trt_args(dynamics_bundle), "assistant": trt_args(assistant_bundle)}
        return world

    def _patch(self) -> tuple[slice, ...]:
        """The centre of the window that the renderer regenerates."""
        lo = [(w - p) // 2 for w, p in zip(self.window, self.patch, strict=True)]
        return tuple(slice(a, a + p) for a, p in zip(lo, self.patch, strict=True))

    @torch.no_grad()
    def respond(self, protocols: np.ndarray, seed: int = 0, features: np.ndarray | None = None) -> Simulation:
        """The response head's prediction for every protocol (rows of a multi-hot matrix) for a lesion with
        these `features` (`oncoplan.tace.lesion_features`): what :meth:`simulate` conditions its renderer
        on, without rendering or segmenting anything. Enough for a read-out of the layouts (the planner's
        default heuristic), at a fraction of the cost."""
        response = self._responses(protocols, features).cpu().numpy()
        return Simulation(None, None, None, self._patch(), response, seed, self.samples)

    def _responses(self, protocols: np.ndarray, features: np.ndarray | None = None) -> torch.Tensor:
        return self.dynamics.response(torch.as_tensor(protocols, dtype=torch.float32).to(self.device), features)

    @torch.no_grad()
    def simulate(
        self,
        pre_window: np.ndarray,
        mask_window: np.ndarray,
        protocols: np.ndarray,
        seed: int = 0,
        features: np.ndarray | None = None,
    ):
        """Simulate every protocol (rows of a multi-hot matrix) `samples` times and segment the results.
        The dynamics model's response head turns each protocol into the response its renderer draws, for a
        lesion with these `features` (`oncoplan.tace.lesion_features`; None: as the average lesion)."""
        patch = self._patch()
        pre = torch.as_tensor(pre_window[patch], dtype=torch.float32)[None, None].to(self.device)
        mask = torch.as_tensor(mask_window[patch] > 0, dtype=torch.float32)[None, None].to(self.device)
        self.sampler.set_timesteps(self.steps)
        responses = self._responses(protocols, features)
        posts = simulate(
            self.dynamics_forward,
            pre,
            mask,
            responses,
            self.sampler,
            self.samples,
            seed,
            self.guidance,
            self.anchor,
        ).cpu()
        n_protocols, samples = posts.shape[:2]
        windows = np.repeat(pre_window[None], n_protocols * samples, axis=0).astype(np.float32)
        windows[(slice(None), *patch)] = posts.reshape(n_protocols * samples, *self.patch).clamp(-1, 1).numpy()
        labels = self.assistant_forward(torch.as_tensor(windows[:, None]).to(self.device)).argmax(1).cpu()
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
            seed,
        )


def _rendered_outside_lesion(mask_window: np.ndarray, patch: tuple[slice, ...]) -> np.ndarray:
    """Window voxels the renderer regenerated (`patch`) that lie outside the (dilated) tumor mask."""
    outside = np.zeros(mask_window.shape, dtype=bool)
    lesion = ndimage.binary_dilation(mask_window > 0, iterations=LESION_MARGIN)
    outside[patch] = ~lesion[patch]
    return outside
