"""Model-space results onto an image's own grid, computed only where they can be non-zero.

A mask predicted on a coarse model grid covers a small part of a 512 x 512 x 120 CT; resampling
every voxel of the CT costs seconds and gigabytes (MONAI's affine grid alone is 12 bytes a voxel,
BENCHMARKS.md, contouring). Both helpers here map the support's bounding box onto the target grid
and resample inside it only, which gives the same mask as resampling everything.
"""

from __future__ import annotations

import itertools

import numpy as np

FAR = 1e6  # voxels: a box side that may reach the target's edge


def support_box(
    lo: np.ndarray, hi: np.ndarray, to_target: np.ndarray, target_shape: tuple[int, ...], reach: float
) -> tuple[slice, ...] | None:
    """The target voxels whose source coordinate lies within `reach` voxels of the source box
    [`lo`, `hi`] (inclusive indices; `to_target`: source index -> target index, 4 x 4); None if empty.
    `reach` is 0.5 for nearest-neighbour sampling and 1 for linear (a value needs a neighbour in the box)."""
    corners = np.array(list(itertools.product(*zip(np.asarray(lo) - reach, np.asarray(hi) + reach, strict=True))))
    corners = np.clip(corners, -FAR, FAR)
    mapped = corners @ to_target[:3, :3].T + to_target[:3, 3]
    start = np.clip(np.floor(mapped.min(0)).astype(int), 0, target_shape)
    stop = np.clip(np.ceil(mapped.max(0)).astype(int) + 1, 0, target_shape)
    if np.any(stop <= start):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))


def linear_mask_onto(prob, target_affine: np.ndarray, target_shape: tuple[int, ...], threshold: float = 0.5):
    """`prob` (a (1, X, Y, Z) MetaTensor whose last applied operation is MONAI's Spacing, as Invertd
    would undo it) resampled onto the grid `target_affine` / `target_shape` with the Spacing's own
    interpolation and padding, thresholded (> `threshold`); a bool array of `target_shape`.

    Exact for the mask: a linear interpolant exceeds the threshold only next to a source voxel that
    does, so outside that support's box (reach 1 voxel; to the edge where the support touches the
    source grid's border and the padding repeats the border) every voxel stays below it."""
    import torch
    from monai.transforms import SpatialResample

    spacing = prob.applied_operations[-1]["extra_info"]
    padding = spacing["padding_mode"]
    out = np.zeros(target_shape, dtype=bool)
    found = np.argwhere(np.asarray(prob[0].detach().cpu()) > threshold)
    if not len(found):
        return out
    src_affine = np.asarray(prob.affine, dtype=float)
    lo, hi = found.min(0).astype(float), found.max(0).astype(float)
    if padding == "border":  # the border value repeats outwards: a support on the border reaches the edge
        lo[found.min(0) == 0] = -FAR
        hi[found.max(0) == np.asarray(prob.shape[1:]) - 1] = FAR
    box = support_box(lo, hi, np.linalg.inv(target_affine) @ src_affine, target_shape, reach=1.0)
    if box is None:
        return out
    box_affine = np.asarray(target_affine, dtype=float).copy()
    box_affine[:3, 3] = box_affine[:3, :3] @ [s.start for s in box] + box_affine[:3, 3]
    align = spacing["align_corners"]
    resample = SpatialResample(
        mode=spacing["mode"], padding_mode=padding, align_corners=align if isinstance(align, bool) else False
    )
    with resample.trace_transform(False):
        values = resample(
            prob.float(),
            dst_affine=torch.as_tensor(box_affine, dtype=torch.float64),
            spatial_size=[s.stop - s.start for s in box],
        )
    out[box] = np.asarray(values[0].detach().cpu()) > threshold
    return out
