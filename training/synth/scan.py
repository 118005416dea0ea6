"""How a synthetic patient is scanned: field of view, matrix, spacing, slices, position."""

from __future__ import annotations

import numpy as np

from oncoplan.training.synth.geometry import Grid

SIZES = ("full", "small")
# "small" keeps anatomy and rules but images them on a coarse grid (tests, CPU training).
_MATRIX = {"full": (448, 512, 512, 512), "small": (96, 112, 128, 128)}


def sample_grid(
    rng: np.random.Generator,
    body_width_mm: float,
    z_top: float,
    z_bottom: float,
    thicknesses: tuple[float, ...],
    size: str = "full",
    feet_first: float = 0.2,
    centre_xy: tuple[float, float] = (0.0, 0.0),
) -> Grid:
    """A clinical-looking axial grid covering the body width and [z_bottom, z_top].

    Full size: matrix 448-512, in-plane spacing 0.6-1.0 mm (small bodies are imaged with a
    tighter field of view), slice thickness from `thicknesses`, head- or feet-first.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    matrix = int(rng.choice(_MATRIX[size]))
    fov = body_width_mm + float(rng.uniform(10, 60))
    spacing = fov / matrix
    thickness = float(rng.choice(thicknesses))
    if size == "full":
        spacing = float(np.clip(spacing, 0.6, 1.0))
    else:
        thickness *= 2.0
    slices = max(round((z_top - z_bottom) / thickness), 4)
    position = "FFS" if rng.random() < feet_first else "HFS"
    centre = (centre_xy[0], centre_xy[1], (z_top + z_bottom) / 2)
    spacing = round(spacing, 4)
    return Grid.centred((slices, matrix, matrix), (thickness, spacing, spacing), centre, position)
