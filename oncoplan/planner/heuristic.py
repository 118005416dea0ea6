"""The planner's heuristic (MeWM seed B.4): survival risk of every simulated outcome of every candidate.

For one case the world model (:class:`oncoplan.tace.world_model.WorldModel`) returns, per
(protocol, sample), a simulated post-treatment window and the assistant's label map of it. The
survival bundle scores a case from a bag of K patches of [pre CT, pre tumor mask, post CT, post tumor
mask] (tumor = label >= 2, the bundle's own ``Lambdad``); at inference it averages the risks of 5
foreground patches. :class:`RiskScorer` builds exactly that input for every simulated outcome:

* the pre-treatment CT and tumor mask are the case's window (the same for every candidate);
* the post-treatment CT is the simulated window, the post tumor mask the assistant's labels >= 2;
* the K patch positions are drawn once per case, seeded, from the pre-treatment tumor voxels inside
  the region the dynamics model regenerates (the bundle's ``RandCropByPosNegLabeld`` with pos=1,
  neg=0 draws foreground centres the same way), and shared by every (protocol, sample): the
  candidates differ only where the protocol made them differ.

Risks come back as a (P, T) array; lower is better (longer predicted survival). Every model space
(spacing, intensity scaling) must be the world model's: :meth:`RiskScorer.from_bundle` reads the
bundle's ``pixdim`` so callers can check it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

import numpy as np
import torch

from oncoplan.runtime.bundles import bundle_parser, load_network

if TYPE_CHECKING:
    from oncoplan.tace.actions import Protocol
    from oncoplan.tace.world_model import Simulation

TUMOR_LABEL = 2  # assistant / prepared label maps: 0 background, 1 liver, >= 2 tumor compartments


class Scorer(TypingProtocol):
    """Risk of every (protocol, sample) of a simulation: (P, T), lower is better. `clinical` is the
    case's cohort row (TCIA column names) where the caller has one; a scorer may ignore it."""

    def __call__(
        self,
        pre_window: np.ndarray,
        mask_window: np.ndarray,
        simulation: Simulation,
        protocols: Sequence[Protocol],
        clinical: Mapping[str, Any] | None = None,
    ) -> np.ndarray: ...


def _pad_to(array: np.ndarray, size: Sequence[int], fill: float) -> np.ndarray:
    """Pad the last len(size) axes symmetrically up to at least `size`."""
    spatial = array.shape[-len(size) :]
    need = [max(0, int(s) - int(n)) for s, n in zip(size, spatial, strict=True)]
    if not any(need):
        return array
    pad = [(0, 0)] * (array.ndim - len(size)) + [(n // 2, n - n // 2) for n in need]
    return np.pad(array, pad, constant_values=fill)


class RiskScorer:
    """Survival-network risk of simulated outcomes; see the module doc.

    `aggregation` is the bundle's: "mean" averages the risks of the K patches scored one by one,
    "mil" scores the bag through the attention pooling. `batch_size` bags go through the network at once.
    Counters `forwards` (network calls) and `seconds` (time in the network) add up over calls.
    """

    name = "survival_network"

    def __init__(
        self,
        network: torch.nn.Module,
        roi_size: Sequence[int],
        patches: int = 5,
        aggregation: str = "mean",
        batch_size: int = 8,
        seed: int = 0,
        pixdim: Sequence[float] | None = None,
    ) -> None:
        from oncoplan.tace.survival_net import BagInferer

        if patches < 1 or batch_size < 1:
            raise ValueError("patches and batch_size must be at least 1")
        self.network = network.eval()
        self.roi = tuple(int(v) for v in roi_size)
        self.patches, self.batch_size, self.seed = int(patches), int(batch_size), int(seed)
        self.inferer = BagInferer(aggregation)
        self.pixdim = None if pixdim is None else tuple(float(v) for v in pixdim)
        self.forwards, self.seconds = 0, 0.0

    @classmethod
    def from_bundle(
        cls, bundle: str | Path, overrides: dict | None = None, batch_size: int | None = None
    ) -> RiskScorer:
        """The survival bundle's network, weights, ROI, patch count and aggregation (inference.json)."""
        parser = bundle_parser(bundle, overrides=overrides)
        return cls(
            load_network(parser),
            parser.get_parsed_content("roi_size"),
            int(parser.get_parsed_content("eval_patches")),
            str(parser.get_parsed_content("aggregation")),
            int(batch_size or parser.get_parsed_content("batch_size")),
            int(parser.get_parsed_content("seed")),
            parser.get_parsed_content("pixdim"),
        )

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def positions(self, mask_window: np.ndarray, region: Sequence[slice] | None = None) -> list[tuple[int, ...]]:
        """Start indices of the K patches in the (padded) window: seeded draws of tumor voxels inside
        `region` (all tumor voxels if none is there, the window centre if there is no tumor), moved so
        every patch lies inside the window."""
        mask = _pad_to(np.asarray(mask_window) > 0, self.roi, 0)
        shift = [(p - n) // 2 for p, n in zip(mask.shape, np.shape(mask_window), strict=True)]
        inside = np.zeros_like(mask)
        if region is not None:
            box = tuple(slice(s.start + d, s.stop + d) for s, d in zip(region, shift, strict=True))
            inside[box] = mask[box]
        coords = np.argwhere(inside) if inside.any() else np.argwhere(mask)
        if not len(coords):
            coords = np.asarray([[n // 2 for n in mask.shape]])
        rng = np.random.default_rng(self.seed)
        picks = coords[rng.choice(len(coords), self.patches, replace=len(coords) < self.patches)]
        half = np.asarray(self.roi) // 2
        hi = np.asarray(mask.shape) - np.asarray(self.roi)
        return [tuple(int(v) for v in np.clip(c - half, 0, hi)) for c in picks]

    def _crop(self, array: np.ndarray, starts: list[tuple[int, ...]]) -> np.ndarray:
        """(..., *window) -> (..., K, *roi)."""
        crops = [array[(..., *(slice(a, a + r) for a, r in zip(s, self.roi, strict=True)))] for s in starts]
        return np.stack(crops, axis=-1 - len(self.roi))

    @torch.no_grad()
    def __call__(
        self,
        pre_window: np.ndarray,
        mask_window: np.ndarray,
        simulation: Simulation,
        protocols: Sequence[Protocol] | None = None,
        clinical: Mapping[str, Any] | None = None,
    ) -> np.ndarray:
        """Risks (P, T) of every simulated outcome (protocols and clinical data are not read: the
        network sees only the images)."""
        starts = self.positions(mask_window, simulation.patch_slices)
        n_protocols, samples = simulation.windows.shape[:2]
        pre = self._crop(_pad_to(np.asarray(pre_window, dtype=np.float32), self.roi, -1.0), starts)
        pre_mask = self._crop(_pad_to((np.asarray(mask_window) > 0).astype(np.float32), self.roi, 0.0), starts)
        pre_part = torch.as_tensor(np.stack([pre, pre_mask], axis=1))  # (K, 2, *roi)
        post = simulation.windows.reshape(n_protocols * samples, *simulation.windows.shape[2:])
        labels = simulation.labels.reshape(n_protocols * samples, *simulation.labels.shape[2:])
        device = self.device
        risks = []
        for lo in range(0, len(post), self.batch_size):
            img = self._crop(_pad_to(post[lo : lo + self.batch_size].astype(np.float32), self.roi, -1.0), starts)
            lab = (labels[lo : lo + self.batch_size] >= TUMOR_LABEL).astype(np.float32)
            tum = self._crop(_pad_to(lab, self.roi, 0.0), starts)
            post_part = torch.as_tensor(np.stack([img, tum], axis=2))  # (b, K, 2, *roi)
            bags = torch.cat([pre_part.expand(len(post_part), *pre_part.shape), post_part], dim=2)
            t0 = time.perf_counter()
            risk = self.inferer(bags.to(device), self.network).reshape(-1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.seconds += time.perf_counter() - t0
            self.forwards += 1
            risks.append(risk.float().cpu().numpy())
        return np.concatenate(risks).reshape(n_protocols, samples).astype(np.float64)
