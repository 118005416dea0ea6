"""Datalists for the CTV bundle from the three layouts users have.

(a) a synthetic breast cohort (`cohort.csv` from `oncoplan synth breast`);
(b) NIfTI image/label pairs + a CSV of notes or note fields (the released code's layout);
(c) a DICOM export: one folder per case with a CT series and an RTSTRUCT (ROI chosen by
    name), plus a clinical table keyed by case folder or PatientID.
Every entry is {"image", "label", "note", "case_id", "site"}; DICOM is converted once into
NIfTI under `cache_dir` (SimpleITK keeps the patient geometry), so training reads NIfTI.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from oncoplan.ctv.notes import note_from_row, parse_note
from oncoplan.errors import InputError
from oncoplan.fsio import atomic_path
from oncoplan.training.dicom_series import read_ct_series


def _atomic_write_image(image, path: Path) -> None:
    import SimpleITK as sitk

    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)


def dicom_to_nifti(dicom_dir: Path, out: Path) -> Path:
    if not out.exists():
        image, _ = read_ct_series(dicom_dir)
        _atomic_write_image(image, out)
    return out


def synthetic_datalist(cohort_dir: Path, cache_dir: Path) -> list[dict]:
    table = cohort_dir / "cohort.csv"
    if not table.exists():
        raise InputError(f"{cohort_dir}: no cohort.csv (make one with `oncoplan synth breast`)")
    rows = pd.read_csv(table, dtype=str, keep_default_na=False).to_dict("records")
    return [
        {
            "image": str(
                dicom_to_nifti(cohort_dir / r["image_dir"], cache_dir / cohort_dir.name / f"{r['case_id']}.nii.gz")
            ),
            "label": str(cohort_dir / r["ctv"]),
            "structures": str(cohort_dir / r["structures"]),
            "note": note_from_row(r, f"{table}:{r['case_id']}"),
            "case_id": r["case_id"],
            "site": r.get("site", ""),
            "counterfactuals": _counterfactuals(cohort_dir / r["case_id"]),
        }
        for r in rows
    ]


def _counterfactuals(case_dir: Path) -> list[dict]:
    """The synthetic cohort's counterfactual truth: the same CT under a changed note."""
    index = case_dir / "labels" / "counterfactual.json"
    if not index.exists():
        return []
    cf = json.loads(index.read_text())
    return [{"kind": k, "note": v["note"], "label": str(case_dir / v["ctv"])} for k, v in sorted(cf.items())]


def with_counterfactuals(items: list[dict], enabled: bool = True) -> list[dict]:
    """Each case once as written and, when enabled, once per counterfactual note with its truth.

    Pairing one image with several notes and targets makes the text the only way to lower
    the loss on those pairs; without it the network learns the majority answer from the image.
    """
    out = []
    for item in items:
        base = {k: v for k, v in item.items() if k != "counterfactuals"} | {"variant": "factual"}
        out.append(base)
        for cf in item.get("counterfactuals", []) if enabled else []:
            out.append(base | {"note": cf["note"], "label": cf["label"], "variant": cf["kind"]})
    return out


FREE_TEXT_STREAM = 36  # the free-text draw's own random stream (issue 36), apart from the subset draw


def with_free_text(items: list[dict], fraction: float, seed: int = 0) -> list[dict]:
    """A seeded share `fraction` of the entries with their note (factual or counterfactual alike)
    replaced by a generated free-text paraphrase of the same fields (training/synth/breast_notes.py),
    so the text path learns the fields, not the template's wording. The truth is unchanged: the
    paraphrase says the same side, surgery and N stage. Deterministic in (`seed`, `fraction`), and
    the entries chosen at a smaller fraction are among those chosen at a larger one; `fraction` 0
    leaves the datalist as it was (the shipped recipe). Each chosen entry keeps its Table 5 note in
    `template_note`; every entry says which it carries in `note_form`.
    """
    if not 0 <= fraction <= 1:
        raise InputError(f"free_text_fraction must be in [0, 1], got {fraction}")
    if fraction == 0:
        return items
    from oncoplan.training.synth.breast_notes import free_text_note

    chosen = np.random.default_rng([seed, FREE_TEXT_STREAM, 0]).random(len(items)) < fraction
    words = np.random.default_rng([seed, FREE_TEXT_STREAM, 1])
    out = []
    for item, free in zip(items, chosen, strict=True):
        if free:
            text = free_text_note(parse_note(item["note"]), words)
            out.append(item | {"note": text, "template_note": item["note"], "note_form": "free_text"})
        else:
            out.append(item | {"template_note": item["note"], "note_form": "template"})
    return out


def nifti_csv_datalist(table: Path) -> list[dict]:
    """CSV with `image`, `label` (paths relative to the CSV) and a note or note fields."""
    rows = pd.read_csv(table, dtype=str, keep_default_na=False).to_dict("records")
    out = []
    for i, r in enumerate(rows):
        where = f"{table}:row {i + 2}"
        for key in ("image", "label"):
            if not r.get(key):
                raise InputError(f"{where}: missing {key!r} column value")
            if not (table.parent / r[key]).exists():
                raise InputError(f"{where}: {key} file {r[key]!r} not found")
        out.append(
            {
                "image": str(table.parent / r["image"]),
                "label": str(table.parent / r["label"]),
                "note": note_from_row(r, where),
                "case_id": r.get("case_id") or Path(r["image"]).name.split(".")[0],
                "site": r.get("site", ""),
            }
        )
    return out


def dicom_export_datalist(root: Path, clinical: Path, roi: str, cache_dir: Path) -> list[dict]:
    """Case folders holding CT + RTSTRUCT; the ROI whose name matches `roi` (regex) is the label."""
    import pydicom
    import SimpleITK as sitk

    from oncoplan.rtstruct import read_rtstruct, sorted_order

    table = pd.read_csv(clinical, dtype=str, keep_default_na=False)
    key = next((k for k in ("case_id", "PatientID", "patient_id") if k in table.columns), None)
    if key is None:
        raise InputError(f"{clinical}: needs a case_id or PatientID column")
    notes = {r[key]: r for r in table.to_dict("records")}
    pattern = re.compile(roi, re.IGNORECASE)
    out = []
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        structs = [f for f in case.rglob("*") if f.is_file() and _modality(f) == "RTSTRUCT"]
        if len(structs) != 1:
            raise InputError(f"{case}: expected one RTSTRUCT, found {len(structs)}")
        ct_dir = next(f.parent for f in case.rglob("*") if f.is_file() and _modality(f) == "CT")
        image, files = read_ct_series(ct_dir)
        ct = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        masks = read_rtstruct(structs[0], ct)
        names = [n for n in masks if pattern.fullmatch(n) or pattern.search(n)]
        if len(names) != 1:
            raise InputError(f"{structs[0]}: ROI {roi!r} matches {names or 'nothing'} among {list(masks)}")
        patient = str(ct[0].get("PatientID", ""))
        row = notes.get(case.name) or notes.get(patient)
        if row is None:
            raise InputError(f"{clinical}: no row for case {case.name!r} (PatientID {patient!r})")
        img_path = cache_dir / root.name / f"{case.name}.nii.gz"
        lab_path = cache_dir / root.name / f"{case.name}_label.nii.gz"
        if not img_path.exists():
            _atomic_write_image(image, img_path)
        if not lab_path.exists():
            # read_rtstruct's masks are in ascending slice-normal order; put them in the reader's.
            label = sitk.GetImageFromArray(masks[names[0]][np.argsort(sorted_order(ct))].astype(np.uint8))
            label.CopyInformation(image)
            _atomic_write_image(label, lab_path)
        out.append(
            {
                "image": str(img_path),
                "label": str(lab_path),
                "note": note_from_row(row, f"{clinical}:{case.name}"),
                "case_id": case.name,
                "site": row.get("site", ""),
            }
        )
    return out


def _modality(path: Path) -> str | None:
    import pydicom

    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality"))
    except Exception:  # not DICOM: skipped like any other stray file
        return None


def label_on_image_grid(label_path: str, image_path: str) -> np.ndarray:
    """A label resampled (nearest) onto an image's grid, as a nibabel-order (i, j, k) array.

    The cohort's label NIfTI and the NIfTI converted from DICOM describe the same voxels but may
    store them in another order (e.g. a flipped slice axis), so arrays must not be compared raw.
    """
    import SimpleITK as sitk

    image = sitk.ReadImage(image_path)
    label = sitk.ReadImage(label_path)
    same = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
    return sitk.GetArrayFromImage(same).transpose(2, 1, 0)


def build_datalist(
    source: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    fraction: float = 1.0,
    seed: int = 0,
    clinical: str | None = None,
    roi: str = "CTV",
    counterfactual: bool = False,
    free_text_fraction: float = 0.0,
) -> list[dict]:
    """A datalist from any of the three layouts, optionally a seeded fraction of it (data efficiency).

    `counterfactual` adds the synthetic cohort's counterfactual note/truth pairs of the kept cases.
    `free_text_fraction` turns that seeded share of the notes (counterfactual ones too) into generated
    free-text paraphrases of the same fields (`with_free_text`; 0, the default, changes nothing).
    """
    src = Path(source)
    cache = Path(cache_dir) if cache_dir else src.parent / ".oncoplan_cache"
    if src.is_file() and src.suffix == ".json":
        items = json.loads(src.read_text())
    elif src.is_file() and src.suffix == ".csv":
        items = nifti_csv_datalist(src)
    elif (src / "cohort.csv").exists():
        items = synthetic_datalist(src, cache)
    elif src.is_dir() and clinical:
        items = dicom_export_datalist(src, Path(clinical), roi, cache)
    else:
        raise InputError(
            f"{src}: not a cohort folder, a NIfTI CSV, a datalist JSON, or a DICOM export with a clinical table"
        )
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction}")
    if fraction < 1:
        keep = np.random.default_rng(seed).permutation(len(items))[: max(1, round(fraction * len(items)))]
        items = [items[i] for i in sorted(keep)]
    return with_free_text(with_counterfactuals(items, counterfactual), free_text_fraction, seed)


def prepare_batch(batch: dict, device=None, non_blocking: bool = False, **kwargs):
    """MONAI engines' hook: image and label to the device, the notes as the network's keyword."""
    from monai.engines import default_prepare_batch

    image, label = default_prepare_batch(batch, device, non_blocking, **kwargs)
    return image, label, (), {"notes": list(batch["note"])}


def prepare_image_batch(batch: dict, device=None, non_blocking: bool = False, **kwargs):
    """Inference: like `prepare_batch` but with no label (the evaluator passes None as target)."""
    from monai.utils import CommonKeys

    image = batch[CommonKeys.IMAGE].to(device=device, non_blocking=non_blocking, **kwargs)
    return image, None, (), {"notes": list(batch["note"])}
