"""Overlap and surface metrics on physical spacing, and bootstrap confidence intervals."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred.astype(bool), truth.astype(bool)
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2 * (p & t).sum() / total)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred.astype(bool), truth.astype(bool)
    union = (p | t).sum()
    return 1.0 if union == 0 else float((p & t).sum() / union)


def hd95_mm(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (MONAI, on the voxel spacing given).

    Empty prediction or truth gives inf (there is no surface to measure): callers report it.
    """
    import torch
    from monai.metrics import compute_hausdorff_distance

    p, t = pred.astype(bool), truth.astype(bool)
    if not p.any() or not t.any():
        return float("inf")
    yp = torch.as_tensor(p)[None, None]
    yt = torch.as_tensor(t)[None, None]
    value = compute_hausdorff_distance(
        yp, yt, include_background=True, percentile=95, spacing=[float(s) for s in spacing]
    )
    return float(value.item())


def bootstrap_ci(
    values: Sequence[float], n: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap CI over cases (resampling cases with replacement)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n, v.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))
