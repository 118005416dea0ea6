"""Analytic anatomy: superellipsoids with smooth surface wobble, clipped by half-spaces.

Shapes live in anatomical millimetres; a scan sees them through a world->anatomy map, so
the same patient can be imaged at another position (misregistration, deformation) and its
ground truth stays exact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from oncoplan.training.synth.geometry import Grid

Points = np.ndarray  # (..., 3) float32 millimetres


def rotation(rx_deg: float = 0.0, ry_deg: float = 0.0, rz_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix for intrinsic x, then y, then z rotations in degrees."""
    ax, ay, az = np.deg2rad([rx_deg, ry_deg, rz_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Shape:
    """|u|^p + |v|^p raised to q/p, plus |w|^q <= 1 in the shape's own frame.

    `wobble` perturbs the surface by a few percent with smooth lobes (amplitude, seed);
    `keep` lists half-spaces (normal, point): only points with normal.(x - point) <= 0 stay.
    """

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    p_xy: float = 2.0
    p_z: float = 2.0
    axes: np.ndarray | None = None  # 3x3, columns are the shape's axes in anatomy space
    wobble: tuple[float, int] | None = None
    keep: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = ()

    def scaled(self, delta_mm: float) -> Shape:
        """The same shape grown (delta > 0) or shrunk (delta < 0) by about delta_mm."""
        radii = tuple(max(r + delta_mm, 0.5) for r in self.radii)
        return Shape(self.centre, radii, self.p_xy, self.p_z, self.axes, self.wobble, self.keep)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box (lo, hi) holding the shape, in anatomy mm."""
        half = np.asarray(self.radii) * (1.0 + (self.wobble[0] if self.wobble else 0.0)) + 1.0
        if self.axes is not None:
            half = np.abs(np.asarray(self.axes)) @ half
        c = np.asarray(self.centre, dtype=float)
        return c - half, c + half

    def inside(self, pts: Points) -> np.ndarray:
        d = pts - np.asarray(self.centre, dtype=np.float32)
        if self.axes is not None:
            d = d @ np.asarray(self.axes, dtype=np.float32)
        u = np.abs(d / np.asarray(self.radii, dtype=np.float32))
        level = (u[..., 0] ** self.p_xy + u[..., 1] ** self.p_xy) ** (self.p_z / self.p_xy) + u[..., 2] ** self.p_z
        if self.wobble is not None:
            amp, seed = self.wobble
            rng = np.random.default_rng(seed)
            norm = np.sqrt((d * d).sum(-1)) + 1e-6
            lobes = np.zeros(level.shape, dtype=np.float32)
            for _ in range(3):
                k = rng.normal(size=3).astype(np.float32) * 2.5
                lobes += np.sin((d @ k) / norm + rng.uniform(0, 2 * np.pi)).astype(np.float32)
            level = level / (1.0 + amp * lobes / 3.0) ** self.p_z
        out = level <= 1.0
        for normal, point in self.keep:
            out &= ((pts - np.asarray(point, dtype=np.float32)) @ np.asarray(normal, dtype=np.float32)) <= 0
        return out


@dataclass
class Region:
    """A named structure: union of shapes, within every `within` shape, minus other shapes."""

    union: list[Shape]
    minus: list[Shape] = field(default_factory=list)
    within: list[Shape] = field(default_factory=list)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.union:
            return np.full(3, np.inf), np.full(3, -np.inf)  # empty: intersects nothing
        boxes = [s.bounds() for s in self.union]
        return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)

    def inside(self, pts: Points) -> np.ndarray:
        out = np.zeros(pts.shape[:-1], dtype=bool)
        for s in self.union:
            out |= s.inside(pts)
        for s in self.within:
            if out.any():
                out &= s.inside(pts)
        for s in self.minus:
            if out.any():
                out &= ~s.inside(pts)
        return out


WorldToAnatomy = Callable[[Points], Points]


def rasterise(
    regions: Mapping[str, Region],
    grid: Grid,
    world_to_anatomy: WorldToAnatomy | None = None,
    max_displacement_mm: float = 0.0,
) -> dict[str, np.ndarray]:
    """Boolean mask of every region on the grid (shape grid.shape).

    Each region is evaluated only inside its bounding box; `max_displacement_mm` bounds how
    far `world_to_anatomy` moves a point, so the box can be found in world space.
    """
    masks = {name: np.zeros(grid.shape, dtype=bool) for name in regions}
    for name, region in regions.items():
        lo, hi = region.bounds()
        if not np.all(np.isfinite(lo)):
            continue
        lo, hi = lo - max_displacement_mm, hi + max_displacement_mm
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        idx = grid.to_index(corners)
        first = np.clip(np.floor(idx.min(0)).astype(int), 0, np.array(grid.shape))
        last = np.clip(np.ceil(idx.max(0)).astype(int) + 1, 0, np.array(grid.shape))
        if np.any(last <= first):
            continue
        box = tuple(slice(a, b) for a, b in zip(first, last, strict=True))
        world = grid.world_points(box)
        pts = world if world_to_anatomy is None else world_to_anatomy(world)
        masks[name][box] = region.inside(pts)
    return masks


def smooth_field(grid: Grid, rng: np.random.Generator, scale_mm: float, world_to_anatomy=None) -> np.ndarray:
    """A unit-variance random texture that varies over ~scale_mm, fixed to the anatomy."""
    lattice = rng.normal(size=(48, 48, 48)).astype(np.float32)
    lattice = ndimage.gaussian_filter(lattice, 1.0)
    lattice /= lattice.std() + 1e-6
    out = np.empty(grid.shape, dtype=np.float32)
    for sl, world in grid.slabs():
        pts = world if world_to_anatomy is None else world_to_anatomy(world)
        idx = (pts.reshape(-1, 3) / scale_mm) % 47.0
        out[sl] = ndimage.map_coordinates(lattice, idx.T, order=1, mode="wrap").reshape(pts.shape[:-1])
    return out


def finish_ct(
    hu: np.ndarray, grid: Grid, rng: np.random.Generator, noise_hu: float, blur_mm: float = 0.8
) -> np.ndarray:
    """Scanner look: in-plane blur (partial volume) and quantum noise, clipped to the CT range."""
    sigma = (0.0, blur_mm / grid.row_spacing, blur_mm / grid.col_spacing)
    out = ndimage.gaussian_filter(hu.astype(np.float32), sigma)
    out += rng.normal(0.0, noise_hu, size=out.shape).astype(np.float32)
    return np.clip(out, -1024, 3071)
