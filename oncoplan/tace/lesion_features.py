"""What the pre-treatment multiphase CT shows of a tumour's response biology, as four numbers.

In HCC the arterial and portal-venous phases read together carry part of how a tumour will respond:
arterial hyperenhancement and portal-venous washout go with its vascularity (Lipiodol and bead uptake),
its heterogeneity with its biology (LI-RADS reads both phases for this reason). The world model's response
head (:class:`oncoplan.tace.dynamics.ResponseHead`) conditions each protocol's predicted response on these:

* ``arterial enhancement``, ``portal-venous washout``: median tumour intensity minus the median of a ring
  of tissue just outside it (``RING_VOXELS`` voxels; mostly liver), per phase;
* ``arterial texture``, ``portal-venous texture``: log of the intensity SD of the tumour's core (the tumour
  less its one-voxel rim; the whole tumour where the core is too small to measure), per phase.

Inputs are model-space volumes (the bundles' RAS grid at their voxel spacing, intensities scaled by their
shared HU window to [-1, 1]), so a training case and a study the app reads give the same numbers. A phase
that is missing gives NaN for its two features; the head replaces NaN by its training mean.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

FEATURES = ("arterial enhancement", "portal-venous washout", "arterial texture", "portal-venous texture")
RING_VOXELS = 2
MIN_TUMOUR_VOXELS = 8


def _phase(volume: np.ndarray | None, tumour: np.ndarray, ring: np.ndarray, core: np.ndarray) -> tuple[float, float]:
    if volume is None or tumour.sum() < MIN_TUMOUR_VOXELS or not ring.any():
        return float("nan"), float("nan")
    values = volume[tumour]
    # Texture from the core: a rim voxel averages tumour and liver (partial volume), so the rim's spread follows
    # the enhancement contrast, not the tumour's texture (on liver-3 training cases the arterial phase's
    # correlation with the visible anthracycline sensitivity rises from 0.69 to 0.87 without the rim).
    textured = volume[core] if core.sum() >= MIN_TUMOUR_VOXELS else values
    return float(np.median(values) - np.median(volume[ring])), float(np.log(np.std(textured) + 1e-3))


def lesion_features(portal_venous: np.ndarray | None, arterial: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
    """The four :data:`FEATURES` of the tumour `mask` (boolean, the volumes' shape) in `FEATURES` order."""
    tumour = np.asarray(mask) > 0
    for name, volume in (("portal-venous", portal_venous), ("arterial", arterial)):
        if volume is not None and np.shape(volume) != tumour.shape:
            raise ValueError(f"{name} volume {np.shape(volume)} and tumour mask {tumour.shape} differ in shape")
    ring = ndimage.binary_dilation(tumour, iterations=RING_VOXELS) & ~tumour
    core = ndimage.binary_erosion(tumour, iterations=1)
    enhancement, arterial_texture = _phase(arterial, tumour, ring, core)
    washout, venous_texture = _phase(portal_venous, tumour, ring, core)
    return np.array([enhancement, washout, arterial_texture, venous_texture], dtype=np.float64)


def study_features(
    pre: np.ndarray, mask: np.ndarray, phase: str = "PVP", arterial: np.ndarray | None = None
) -> np.ndarray:
    """:func:`lesion_features` of a planning study, on its whole model-space volume: `pre` is the series the
    app planned on, the portal-venous phase (`phase` "PVP") or, in a study without one, the arterial phase
    ("AP"); the arterial volume (same grid) goes beside a portal-venous one where the study has both."""
    if phase == "AP":
        return lesion_features(None, pre, mask)
    return lesion_features(pre, arterial, mask)
