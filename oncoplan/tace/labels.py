"""The TACE label map, one definition for every TACE bundle and the planner, and what a label map says
about a lesion's response."""

from __future__ import annotations

import numpy as np

LABELS: dict[str, int] = {"liver": 1, "viable": 2, "necrosis": 3, "lipiodol": 4}
TUMOR_LABELS: tuple[int, ...] = (LABELS["viable"], LABELS["necrosis"], LABELS["lipiodol"])


def viable_fraction(labels: np.ndarray, empty: float = float("nan")) -> float:
    """Viable share of the whole lesion (viable / (viable + necrosis + Lipiodol)); `empty` without a lesion."""
    tumor = np.isin(labels, TUMOR_LABELS).sum()
    return float((labels == LABELS["viable"]).sum() / tumor) if tumor else empty


def lesion_response(pre_labels: np.ndarray, post_labels: np.ndarray) -> list[float]:
    """What treatment did to the lesion, read from label maps on one grid (post registered to pre):
    the viable, necrosis and Lipiodol shares of the post-treatment lesion and its volume over the
    pre-treatment lesion's. The dynamics model renders the post scan from these four numbers."""
    before = int(np.isin(pre_labels, TUMOR_LABELS).sum())
    after = int(np.isin(post_labels, TUMOR_LABELS).sum())
    if not after:
        return [0.0, 0.0, 0.0, 0.0]
    shares = [float((post_labels == label).sum() / after) for label in TUMOR_LABELS]
    return [*shares, after / before if before else 1.0]
