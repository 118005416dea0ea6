"""The LLMSeg evaluation on a cohort: overlap, HD95 in cm, bootstrap CIs, sites, counterfactual notes.

Counterfactual text (the point of a text-guided model):
- laterality flip: the note's side(s) swapped; success when >= 90% of the predicted CTV lies
  on the other side of the body midline (unilateral cases);
- N0 -> N+: every side set to N1; success when the predicted CTV inside the treated side's
  nodal regions grows by at least half of those regions' volume (the guideline adds them);
- N+ -> N0: the reverse; success when at least half of that nodal CTV goes away.
Nodal regions come from the cohort's `structures` label map (synthetic cohorts have one).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from ..metrics import bootstrap_ci, dice, hd95_mm, iou
from ..synth.breast import NODAL, NODE_POSITIVE
from .data import build_datalist, label_on_image_grid
from .notes import parse_note, swap_laterality, with_n_stage
from .predict import CTVPredictor

LATERALITY_MOVED = 0.9  # fraction of the CTV that must change side
NODAL_SHARE = 0.5  # fraction of the nodal regions that must be added or removed


def _load(path: str) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine


def _world_x(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """RAS x (mm) of every voxel. In RAS+ world space the patient's left is at negative x."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape[:3]), indexing="ij")
    return affine[0, 0] * i + affine[0, 1] * j + affine[0, 2] * k + affine[0, 3]


def _left_of_midline(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxels on the patient's left of the body's midline (body = above -400 HU)."""
    x = _world_x(image.shape, affine)
    body = image > -400
    midline = float(x[body].mean()) if body.any() else float(x.mean())
    return x < midline


def _nodal_mask(structures_path: str, image_path: str, sides: set[str]) -> np.ndarray:
    labels = label_on_image_grid(structures_path, image_path)
    legend = json.loads(Path(structures_path.replace(".nii.gz", ".json")).read_text())
    wanted = {int(k) for k, name in legend.items() if any(name == f"{n}_{s}" for n in NODAL for s in sides)}
    return np.isin(labels, list(wanted))


def evaluate_case(predictor: CTVPredictor, item: dict, counterfactual: bool = True) -> dict:
    image, affine = _load(item["image"])
    truth = label_on_image_grid(item["label"], item["image"]) > 0
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    sides = parse_note(item["note"])
    notes = {"original": item["note"]}
    unilateral = len(sides) == 1
    if counterfactual:
        if unilateral:
            notes["laterality_flip"] = swap_laterality(item["note"])
        positive = any(s.n_stage in NODE_POSITIVE for s in sides)
        notes["nodal_flip"] = with_n_stage(item["note"], "N0" if positive else "N1")
    preds = dict(zip(notes, predictor.predict(item["image"], list(notes.values())), strict=True))
    pred = preds["original"]
    row = {
        "case_id": item["case_id"],
        "site": item.get("site", ""),
        "note": item["note"],
        "dice": dice(pred, truth),
        "iou": iou(pred, truth),
        "hd95_cm": hd95_mm(pred, truth, spacing) / 10.0,
        "volume_cc": float(pred.sum() * np.prod(spacing) / 1000),
        "truth_volume_cc": float(truth.sum() * np.prod(spacing) / 1000),
    }
    if "laterality_flip" in preds:
        flipped = preds["laterality_flip"]
        left = _left_of_midline(image, affine)
        other_side = ~left if sides[0].side == "left" else left
        row["laterality_moved"] = float((flipped & other_side).sum() / max(flipped.sum(), 1))
    if "nodal_flip" in preds and item.get("structures"):
        nodal = _nodal_mask(item["structures"], item["image"], {s.side for s in sides})
        before, after = (pred & nodal).sum(), (preds["nodal_flip"] & nodal).sum()
        change = float((after - before) / max(nodal.sum(), 1))
        row["nodal_direction"] = "remove" if any(s.n_stage in NODE_POSITIVE for s in sides) else "add"
        row["nodal_change"] = change
    return row


def summarise(rows: list[dict], n_boot: int = 1000) -> dict:
    """Per site (and all): mean and 95% bootstrap CI of each metric; counterfactual success rates."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["site"] or "all"].append(r)
    if len(groups) > 1:
        groups["all"] = rows
    out = {}
    for site, rs in groups.items():
        s: dict = {"cases": len(rs)}
        for m in ("dice", "iou", "hd95_cm"):
            mean, lo, hi = bootstrap_ci([r[m] for r in rs], n=n_boot)
            s[m] = {"mean": mean, "ci95": [lo, hi]}
        lat = [r["laterality_moved"] for r in rs if "laterality_moved" in r]
        if lat:
            s["laterality_flip"] = {
                "cases": len(lat),
                "success_rate": float(np.mean([v >= LATERALITY_MOVED for v in lat])),
                "median_moved": float(np.median(lat)),
            }
        for direction in ("add", "remove"):
            ch = [r["nodal_change"] for r in rs if r.get("nodal_direction") == direction]
            if ch:
                ok = [c >= NODAL_SHARE for c in ch] if direction == "add" else [c <= -NODAL_SHARE for c in ch]
                key = "n0_to_nplus" if direction == "add" else "nplus_to_n0"
                s[key] = {"cases": len(ch), "success_rate": float(np.mean(ok)), "median_change": float(np.median(ch))}
        out[site] = s
    return out


def evaluate_cohorts(
    bundle_dir: str | Path,
    cohorts: dict[str, str],
    models: dict[str, dict],
    cache_dir: str | None = None,
    counterfactual: bool = True,
    progress: bool = True,
) -> dict:
    """`models`: name -> CTVPredictor kwargs (e.g. {"text": {}, "vision": {"text_guided": False}})."""
    items = [
        dict(it, site=it.get("site") or site) for site, src in cohorts.items() for it in build_datalist(src, cache_dir)
    ]
    result: dict = {"cohorts": cohorts, "models": {}}
    for name, kwargs in models.items():
        predictor = CTVPredictor(bundle_dir, **kwargs)
        cf = counterfactual and predictor.text_guided
        rows = [evaluate_case(predictor, it, cf) for it in tqdm(items, desc=f"evaluate {name}", disable=not progress)]
        result["models"][name] = {"summary": summarise(rows), "cases": rows}
    return result


def markdown(result: dict) -> str:
    """The model card's results table."""
    header = ["model", "site", "cases", "Dice (95% CI)", "IoU (95% CI)", "HD95 cm (95% CI)", "laterality flip"]
    header += ["N0->N+", "N+->N0"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def ci(m: dict) -> str:
        return f"{m['mean']:.3f} ({m['ci95'][0]:.3f}-{m['ci95'][1]:.3f})"

    def rate(s: dict, key: str) -> str:
        return f"{s[key]['success_rate']:.0%} of {s[key]['cases']}" if key in s else "-"

    for name, res in result["models"].items():
        for site, s in res["summary"].items():
            lines.append(
                f"| {name} | {site} | {s['cases']} | {ci(s['dice'])} | {ci(s['iou'])} | {ci(s['hd95_cm'])} | "
                f"{rate(s, 'laterality_flip')} | {rate(s, 'n0_to_nplus')} | {rate(s, 'nplus_to_n0')} |"
            )
    return "\n".join(lines) + "\n"


def write_report(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "ctv_evaluation.json", out / "ctv_evaluation.md"
    js.write_text(json.dumps(result, indent=1, default=float))
    md.write_text(markdown(result))
    return js, md


def efficiency_models(bundle_dir: str | Path) -> dict[str, dict]:
    """Models trained on a fraction of the data (seed Table 3), found under models/efficiency/:
    model_f40.pt -> "text-guided 40%", vision_only_f40.pt -> "vision-only 40%"."""
    found = {}
    for path in sorted((Path(bundle_dir) / "models" / "efficiency").glob("*_f*.pt")):
        stem, _, pct = path.stem.rpartition("_f")
        text = stem == "model"
        found[f"{'text-guided' if text else 'vision-only'} {pct}%"] = {
            "model_name": f"efficiency/{path.name}",
            "text_guided": text,
        }
    return dict(sorted(found.items(), key=lambda kv: (kv[0].split()[0], int(kv[0].split()[-1][:-1]))))


def run_evaluation(
    bundle_dir: str | Path,
    cohorts: dict[str, str],
    out_dir: str | Path,
    efficiency: bool = False,
    progress: bool = True,
) -> tuple[Path, Path]:
    models = {"text-guided": {}, "vision-only": {"text_guided": False}}
    result = evaluate_cohorts(bundle_dir, cohorts, models, progress=progress)
    if efficiency:
        extra = evaluate_cohorts(
            bundle_dir,
            cohorts,
            efficiency_models(bundle_dir),
            counterfactual=False,
            progress=progress,
        )
        result["models"].update(extra["models"])
    return write_report(result, out_dir)
