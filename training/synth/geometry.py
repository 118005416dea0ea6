"""Axial CT grids in patient (LPS) coordinates, and their NIfTI affine.

A `Grid` is the voxel lattice of one DICOM CT series: index (k, r, c) is slice k in
instance order, row r, column c. Everything that rasterises anatomy or writes files uses
the same mapping, so labels and images cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# Row direction (+column index) of an axial image, by patient position.
# Head-first supine images run right-to-left along +x; feet-first supine are mirrored.
_ROW_COSINES = {"HFS": (1.0, 0.0, 0.0), "FFS": (-1.0, 0.0, 0.0)}
_COL_COSINES = {"HFS": (0.0, 1.0, 0.0), "FFS": (0.0, 1.0, 0.0)}
# Instance order: head-first scans start at the head (z falls), feet-first at the feet.
_SLICE_STEP_SIGN = {"HFS": -1.0, "FFS": 1.0}


@dataclass(frozen=True)
class Grid:
    """Voxel lattice of an axial series; `first` is ImagePositionPatient of instance 1."""

    rows: int
    cols: int
    slices: int
    row_spacing: float  # mm between rows (PixelSpacing[0])
    col_spacing: float  # mm between columns (PixelSpacing[1])
    slice_spacing: float  # mm between slice centres (= SliceThickness: contiguous)
    first: tuple[float, float, float]
    patient_position: str = "HFS"

    def __post_init__(self) -> None:
        if self.patient_position not in _ROW_COSINES:
            raise ValueError(f"unsupported patient position {self.patient_position!r}")
        if min(self.rows, self.cols, self.slices) < 1:
            raise ValueError("a grid needs at least one voxel along each axis")

    @classmethod
    def centred(
        cls,
        shape: tuple[int, int, int],
        spacing: tuple[float, float, float],
        centre: tuple[float, float, float],
        patient_position: str = "HFS",
    ) -> Grid:
        """A grid of (slices, rows, cols) voxels with (slice, row, col) spacing around `centre`."""
        slices, rows, cols = shape
        grid = cls(rows, cols, slices, spacing[1], spacing[2], spacing[0], (0.0, 0.0, 0.0), patient_position)
        mid = grid.to_world(np.array([[(slices - 1) / 2, (rows - 1) / 2, (cols - 1) / 2]]))[0]
        first = tuple(float(v) for v in np.asarray(centre) - mid)
        return cls(rows, cols, slices, spacing[1], spacing[2], spacing[0], first, patient_position)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.slices, self.rows, self.cols)

    @property
    def row_cosine(self) -> np.ndarray:
        return np.array(_ROW_COSINES[self.patient_position])

    @property
    def col_cosine(self) -> np.ndarray:
        return np.array(_COL_COSINES[self.patient_position])

    @property
    def slice_step(self) -> np.ndarray:
        """World displacement from one instance to the next."""
        return np.array([0.0, 0.0, _SLICE_STEP_SIGN[self.patient_position] * self.slice_spacing])

    def image_orientation(self) -> list[float]:
        return [*self.row_cosine.tolist(), *self.col_cosine.tolist()]

    def image_position(self, k: int) -> list[float]:
        return (np.asarray(self.first) + k * self.slice_step).tolist()

    def index_to_world(self) -> np.ndarray:
        """4x4 matrix taking (c, r, k, 1) to LPS (x, y, z, 1)."""
        m = np.eye(4)
        m[:3, 0] = self.row_cosine * self.col_spacing
        m[:3, 1] = self.col_cosine * self.row_spacing
        m[:3, 2] = self.slice_step
        m[:3, 3] = self.first
        return m

    def to_world(self, krc: np.ndarray) -> np.ndarray:
        """LPS mm of (k, r, c) voxel indices, shape (N, 3)."""
        krc = np.asarray(krc, dtype=float)
        crk = krc[:, ::-1]
        m = self.index_to_world()
        return crk @ m[:3, :3].T + m[:3, 3]

    def to_index(self, xyz: np.ndarray) -> np.ndarray:
        """(k, r, c) continuous indices of LPS points, shape (N, 3)."""
        m = np.linalg.inv(self.index_to_world())
        crk = np.asarray(xyz, dtype=float) @ m[:3, :3].T + m[:3, 3]
        return crk[:, ::-1]

    def nifti_affine(self) -> np.ndarray:
        """RAS affine for a NIfTI array indexed (c, r, k), i.e. `volume.transpose(2, 1, 0)`."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.index_to_world()

    def world_points(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """World coordinates (n_k, n_r, n_c, 3) float32 of the voxels in a (k, r, c) box."""
        k, r, c = (np.arange(s.start, s.stop, dtype=np.float32) for s in box)
        m = self.index_to_world().astype(np.float32)
        return (
            c[None, None, :, None] * m[:3, 0]
            + r[None, :, None, None] * m[:3, 1]
            + k[:, None, None, None] * m[:3, 2]
            + m[:3, 3]
        )

    def slabs(self, size: int = 8) -> Iterator[tuple[slice, np.ndarray]]:
        """World coordinates of the grid in slabs of slices: (slice range, array (n, R, C, 3))."""
        for start in range(0, self.slices, size):
            ks = slice(start, min(start + size, self.slices))
            yield ks, self.world_points((ks, slice(0, self.rows), slice(0, self.cols)))
