"""Where a predicted response sits in the lesion: the post-treatment lesion's label map, drawn from the
pre-treatment tumor mask and the response head's four numbers (`dynamics.RESPONSE`), for the
dynamics renderer to draw the CT from.

A geometric prior, not a learned model, and the card says so: the lesion shrinks from its boundary to
the predicted volume, residual viable tumor keeps the rim and Lipiodol the core (the enhancing rim
and central deposits that follow-up CT after TACE typically shows), necrosis lies between. Depth is
perturbed by smooth seeded noise, so samples differ in layout (the world model's spread) while the
same seed gives every protocol the same perturbation, and differences between protocols come from
their responses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from oncoplan.tace.labels import LABELS

COMPARTMENTS = ("viable", "necrosis", "lipiodol")  # the renderer's condition channels, in this order
NOISE_SIGMA = 1.5  # voxels: the smoothness of the layout's perturbation
NOISE_SCALE = 1.0  # voxels of depth: how far the perturbation moves a compartment boundary


def layout_counts(count: int, response: Sequence[float]) -> tuple[int, int, int]:
    """Voxels of a `count`-voxel lesion that stay lesion, and of those the viable and Lipiodol ones before
    they meet (:func:`lesion_layout` gives Lipiodol the core, so it overwrites viable where both reach)."""
    viable, _, lipiodol, ratio = (float(v) for v in response)
    kept = round(min(max(ratio, 0.0), 1.0) * count)  # the lesion shrinks from its rim
    share = lambda v: min(max(round(v * kept), 0), kept)  # noqa: E731 - a share outside [0, 1] fills or empties it
    return kept, share(viable), share(lipiodol)


def layout_viable_voxels(count: int, response: Sequence[float]) -> int:
    """Viable voxels of every layout :func:`lesion_layout` draws for `response` in a `count`-voxel lesion: the
    perturbation moves where they lie, never how many (a layout read-out needs no drawing)."""
    kept, n_viable, n_lipiodol = layout_counts(count, response)
    return max(min(n_viable, kept - n_lipiodol), 0)


def lesion_layout(mask: np.ndarray, response: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """A label map (`LABELS` values) of the treated lesion inside `mask`: 0 outside the mask, liver
    where the lesion shrank away, viable / necrosis / Lipiodol by the response's shares."""
    tumor = np.asarray(mask) > 0.5
    out = np.zeros(tumor.shape, np.uint8)
    count = int(tumor.sum())
    if not count:
        return out
    n_kept, n_viable, n_lipiodol = layout_counts(count, response)
    noise = ndimage.gaussian_filter(rng.standard_normal(tumor.shape), NOISE_SIGMA)
    noise *= NOISE_SCALE / max(float(noise.std()), 1e-6)
    depth = (ndimage.distance_transform_edt(tumor) + noise)[tumor]
    order = np.argsort(depth, kind="stable")  # rim first, core last
    kept = order[count - n_kept :]  # the lesion shrinks from its rim
    labels = np.full(count, LABELS["liver"], np.uint8)
    labels[kept] = LABELS["necrosis"]
    labels[kept[:n_viable]] = LABELS["viable"]
    labels[kept[len(kept) - n_lipiodol :]] = LABELS["lipiodol"]
    out[tumor] = labels
    return out


def compartments(labels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """One float channel per compartment (`COMPARTMENTS`) of a spatial label map: the renderer's
    condition, drawn by `lesion_layout` at inference and read from post label maps in training."""
    masks = [labels == LABELS[name] for name in COMPARTMENTS]
    return torch.stack(masks).float() if isinstance(labels, torch.Tensor) else np.stack(masks).astype(np.float32)
