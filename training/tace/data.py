"""Datalists for the TACE bundles, read from a folder written by `oncoplan.training.tace.prepare`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from oncoplan.errors import InputError

STUDIES = ("pre", "post")
Sources = str | Path | Sequence[str | Path]  # one prepared folder, or several


def load_prepared(prepared: Sources) -> list[dict[str, object]]:
    """The entries of `prepared/datalist.json`, with file paths made absolute.

    Several prepared folders (a list) give their entries in order: a training set grows by adding
    cohorts without re-preparing the ones it has (case ids may repeat across cohorts; the paths differ).
    """
    if not isinstance(prepared, (str, Path)):
        return [entry for folder in prepared for entry in load_prepared(folder)]
    prepared = Path(prepared)
    path = prepared / "datalist.json"
    if not path.exists():
        raise InputError(
            f"{path}: not found; prepare the cohort first (python -m oncoplan.training.tace.prepare --cohort C --out D)"
        )
    try:
        entries = json.loads(path.read_text())["data"]
    except (ValueError, KeyError) as exc:
        raise InputError(f"{path}: not a prepared-cohort datalist ({exc})") from None
    out = []
    for entry in entries:
        item = dict(entry)
        for key in ("pre_image", "post_image", "pre_label", "post_label", "pre_arterial_image"):
            if item.get(key):
                item[key] = str(prepared / str(item[key]))
        out.append(item)
    return out


def subset(items: list[dict[str, object]], fraction: float = 1.0, seed: int = 0) -> list[dict[str, object]]:
    """A seeded random `fraction` of the cases (at least one)."""
    if not 0 < fraction <= 1:
        raise InputError(f"train_fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return items
    keep = max(1, round(len(items) * fraction))
    order = np.random.default_rng(seed).permutation(len(items))[:keep]
    return [items[i] for i in sorted(order)]


def segmentation_items(
    prepared: Sources, studies: tuple[str, ...] = ("post",), fraction: float = 1.0, seed: int = 0
) -> list[dict[str, object]]:
    """{"image", "label", "case_id", "study"} items of `studies` (post: fine-tuning; pre: pre-training)."""
    for study in studies:
        if study not in STUDIES:
            raise InputError(f"unknown study {study!r}; choose pre or post")
    cases = subset(load_prepared(prepared), fraction, seed)
    return [
        {"image": c[f"{s}_image"], "label": c[f"{s}_label"], "case_id": c["case_id"], "study": s}
        for c in cases
        for s in studies
    ]


def lesion_features_of(entry: dict[str, object], pixdim: Sequence[float] | None = None) -> list[float]:
    """What the case's pre-treatment scan shows of its lesion (`oncoplan.tace.lesion_features`), computed as
    the planner computes it on a study: the volumes at the models' voxel spacing `pixdim` (None: as
    prepared), intensities scaled by the bundles' HU window; the portal-venous phase is the prepared pre
    image unless the case was prepared from its arterial phase (``phase`` AP), the arterial one
    ``pre_arterial_image`` where it was prepared."""
    import SimpleITK as sitk

    from oncoplan.tace.dynamics import HU_WINDOW
    from oncoplan.tace.lesion_features import study_features

    def load(path: object, label: bool = False) -> np.ndarray:
        image = sitk.ReadImage(str(path))
        if pixdim is not None and not np.allclose(image.GetSpacing(), pixdim):
            size = [round(n * s / p) for n, s, p in zip(image.GetSize(), image.GetSpacing(), pixdim, strict=True)]
            interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
            image = sitk.Resample(
                image,
                size,
                sitk.Transform(),
                interpolator,
                image.GetOrigin(),
                tuple(pixdim),
                image.GetDirection(),
                0 if label else -1024.0,
                image.GetPixelID(),
            )
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        if label:
            return array
        lo, hi = HU_WINDOW
        return np.clip((array - lo) / (hi - lo), 0.0, 1.0) * 2.0 - 1.0

    tumour = load(entry["pre_label"], label=True) >= 2  # the bundles' tumour: every label from viable on
    arterial = load(entry["pre_arterial_image"]) if entry.get("pre_arterial_image") else None
    return study_features(load(entry["pre_image"]), tumour, str(entry.get("phase") or "PVP"), arterial).tolist()


def dynamics_items(
    prepared: Sources, fraction: float = 1.0, seed: int = 0, features_at: Sequence[float] | None = None
) -> list[dict[str, object]]:
    """{"image": post CT, "pre": pre CT, "label": pre label map, "post_label": post label map,
    "protocol": multi-hot, "response": the lesion's measured response (`oncoplan.tace.labels.lesion_response`),
    "features": what its pre-treatment scan shows of the lesion (:func:`lesion_features_of` at the voxel spacing
    `features_at`; only a head that reads them needs them, so None, the default, leaves the key out and reads no
    more images)}
    per case with a protocol and a post-treatment label map.

    "image" is the post-treatment scan because it is what the diffusion model generates; "post_label"
    is what it is drawn from (teacher forcing); "response" what the response head learns from the protocol.
    """
    import nibabel as nib

    from oncoplan.tace.labels import lesion_response

    def labels(path: object) -> np.ndarray:
        return np.asarray(nib.load(str(path)).dataobj)

    cases = subset(load_prepared(prepared), fraction, seed)
    return [
        {
            "image": c["post_image"],
            "pre": c["pre_image"],
            "label": c["pre_label"],
            "post_label": c["post_label"],
            "protocol": c["protocol_multi_hot"],
            "response": lesion_response(labels(c["pre_label"]), labels(c["post_label"])),
            "case_id": c["case_id"],
            # Only when asked: a batch cannot hold None, and the population head reads no features.
            **({} if features_at is None else {"features": lesion_features_of(c, features_at)}),
        }
        for c in cases
        if c.get("protocol_multi_hot") and c.get("post_label")
    ]
