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

from oncoplan.ctv.notes import parse_note, swap_laterality, with_n_stage
from oncoplan.ctv.predict import CTVPredictor
from oncoplan.stats import bootstrap_ci, dice, hd95_mm, iou
from oncoplan.training.ctv.data import build_datalist, label_on_image_grid
from oncoplan.training.synth.breast import NODAL, NODE_POSITIVE

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


def _ci(m: dict) -> str:
    return f"{m['mean']:.3f} ({m['ci95'][0]:.3f}-{m['ci95'][1]:.3f})"


def markdown(result: dict) -> str:
    """The model card's results table."""
    header = ["model", "site", "cases", "Dice (95% CI)", "IoU (95% CI)", "HD95 cm (95% CI)", "laterality flip"]
    header += ["N0->N+", "N+->N0"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def rate(s: dict, key: str) -> str:
        return f"{s[key]['success_rate']:.0%} of {s[key]['cases']}" if key in s else "-"

    for name, res in result["models"].items():
        for site, s in res["summary"].items():
            lines.append(
                f"| {name} | {site} | {s['cases']} | {_ci(s['dice'])} | {_ci(s['iou'])} | {_ci(s['hd95_cm'])} | "
                f"{rate(s, 'laterality_flip')} | {rate(s, 'n0_to_nplus')} | {rate(s, 'nplus_to_n0')} |"
            )
    return "\n".join(lines) + "\n"


def efficiency_points(result: dict) -> dict[str, dict[int, dict]]:
    """Model family -> training percentage -> per-site summary (seed Table 3). The full models
    ("text-guided", "vision-only") are the 100% points; "<family> <pct>%" the fractions."""
    points: dict[str, dict[int, dict]] = defaultdict(dict)
    for name, res in result["models"].items():
        family, _, pct = name.partition(" ")
        points[family][int(pct.rstrip("%")) if pct else 100] = res["summary"]
    return {f: dict(sorted(p.items())) for f, p in points.items() if len(p) > 1}


def _sites(points: dict[str, dict[int, dict]]) -> list[str]:
    return [s for s in ("internal", "external") if any(s in v for p in points.values() for v in p.values())]


def efficiency_markdown(result: dict) -> str:
    """Dice and IoU by training fraction and site, with the text-guided model's relative gain over
    the vision-only one at the same fraction (the seed's "Performance Gain" rows)."""
    points = efficiency_points(result)
    if not points:
        return ""
    sites = _sites(points)
    header = ["data", "model"] + [f"{site} {m}" for site in sites for m in ("Dice (95% CI)", "IoU (95% CI)")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    for pct in sorted({p for fam in points.values() for p in fam}):
        here = {fam: pts[pct] for fam, pts in points.items() if pct in pts}
        for fam, summary in here.items():
            cells = [_ci(summary[site][m]) for site in sites for m in ("dice", "iou")]
            lines.append(f"| {pct}% | {fam} | " + " | ".join(cells) + " |")
        if {"text-guided", "vision-only"} <= set(here):
            t, v = here["text-guided"], here["vision-only"]
            gains = [f"{t[site][m]['mean'] / v[site][m]['mean'] - 1:+.0%}" for site in sites for m in ("dice", "iou")]
            lines.append(f"| {pct}% | gain | " + " | ".join(gains) + " |")
    return "\n".join(lines) + "\n"


def plot_efficiency(result: dict, path: Path) -> Path | None:
    """Dice (mean and 95% CI) against the training fraction, one panel per site."""
    points = efficiency_points(result)
    if not points:
        return None
    from matplotlib.figure import Figure

    sites = _sites(points)
    fig = Figure(figsize=(4.2 * len(sites), 3.4), layout="constrained")
    for ax, site in zip(fig.subplots(1, len(sites), squeeze=False)[0], sites, strict=True):
        for fam, pts in points.items():
            pcts = [p for p in pts if site in pts[p]]
            mean = np.array([pts[p][site]["dice"]["mean"] for p in pcts])
            lo = np.array([pts[p][site]["dice"]["ci95"][0] for p in pcts])
            hi = np.array([pts[p][site]["dice"]["ci95"][1] for p in pcts])
            ax.errorbar(pcts, mean, yerr=[mean - lo, hi - mean], marker="o", capsize=3, label=fam)
        ax.set(
            title=f"{site} (synthetic)",
            xlabel="training data (%)",
            ylabel="Dice",
            ylim=(0, 1),
            xticks=[40, 60, 80, 100],
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.savefig(path, dpi=120)
    return path


def write_report(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """ctv_evaluation.json and .md; with efficiency models also ctv_efficiency.md and .png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "ctv_evaluation.json", out / "ctv_evaluation.md"
    js.write_text(json.dumps(result, indent=1, default=float))
    md.write_text(markdown(result))
    table = efficiency_markdown(result)
    if table:
        (out / "ctv_efficiency.md").write_text(table)
        plot_efficiency(result, out / "ctv_efficiency.png")
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
