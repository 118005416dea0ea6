"""Dice, IoU, HD95 on physical spacing, bootstrap CIs: checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np

from oncoplan.stats import bootstrap_ci, dice, hd95_mm, iou


def _box(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


def test_overlap_by_hand() -> None:
    a = _box((10, 10, 10), (0, 0, 0), (4, 10, 10))  # 400 voxels
    b = _box((10, 10, 10), (2, 0, 0), (6, 10, 10))  # 400, overlap 200
    assert dice(a, b) == 0.5
    assert iou(a, b) == 200 / 600
    assert dice(a, a) == 1.0 and dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_hd95_uses_physical_spacing() -> None:
    a = _box((20, 20, 20), (5, 5, 5), (10, 15, 15))
    b = _box((20, 20, 20), (7, 5, 5), (12, 15, 15))  # shifted 2 voxels along axis 0
    assert math.isclose(hd95_mm(a, b, (1, 1, 1)), 2.0, abs_tol=1e-6)
    assert math.isclose(hd95_mm(a, b, (3, 0.7, 0.7)), 6.0, abs_tol=1e-6)  # 2 slices of 3 mm
    assert hd95_mm(a, np.zeros_like(a), (1, 1, 1)) == math.inf


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_n() -> None:
    rng = np.random.default_rng(1)
    small = rng.normal(0.9, 0.05, 10)
    large = rng.normal(0.9, 0.05, 400)
    m, lo, hi = bootstrap_ci(small)
    assert lo < m < hi
    _, lo2, hi2 = bootstrap_ci(large)
    assert (hi2 - lo2) < (hi - lo)
    assert bootstrap_ci([1.0, math.inf, 3.0])[0] == 2.0  # infinite distances are left out, not averaged
