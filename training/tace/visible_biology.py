"""How much of the hidden response biology a regressor recovers from the pre-treatment images.

Generators ``liver-2`` and ``liver-3`` render a noisy copy of each patient's vascularity and anthracycline
sensitivity into the pre-treatment study (``oncoplan.training.synth.write_liver.tumour_look``). This study
measures what a plain reader gets back: per case, four features read from the arterial (AP) and portal-venous (PVP)
series inside the viable tumour of the ground-truth label map, eroded by one voxel against partial volume:

* ``ap_enhancement``, ``pvp_washout``: median tumour HU minus median liver HU, per phase;
* ``ap_texture``, ``pvp_texture``: log of the SD of tumour HU after a 3 mm Gaussian (the texture varies
  over ~5 mm, the scanner noise per voxel; a 3 mm Gaussian keeps most of the first and damps the second).

A linear regression of each hidden quantity on the four features, scored by 5-fold cross-validated R^2
(scikit-learn), is set against the ceiling of a perfect reader: the R^2 of the visible copy itself
(``truth.json`` ``visible``) against the hidden value on the same cases. Cases without both phases (about
one in ten) are counted and left out. Synthetic cohorts whose images show the biology (``liver-2``, ``liver-3``).

    python -m oncoplan.training.tace.visible_biology --cohort D/internal [D/external ...] --out OUT
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from oncoplan.errors import InputError
from oncoplan.fsio import atomic_output_dir
from oncoplan.training.synth.liver import GROUND_TRUTHS

FEATURES = ("ap_enhancement", "pvp_washout", "ap_texture", "pvp_texture")
TARGETS = ("vascularity", "anthracycline")
SMOOTH_MM = 3.0
FOLDS = 5


def _region_medians_and_texture(hu: np.ndarray, viable: np.ndarray, liver: np.ndarray, spacing) -> tuple[float, float]:
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(hu, [SMOOTH_MM / s for s in spacing])
    return float(np.median(hu[viable]) - np.median(hu[liver])), float(np.log(np.std(smooth[viable]) + 1e-3))


def case_features(cohort: Path, row: dict[str, str]) -> dict[str, float] | None:
    """The four features of one case, or None where its pre-treatment study lacks the AP or the PVP series."""
    import SimpleITK as sitk
    from scipy import ndimage

    from oncoplan.training.dicom_series import read_ct_series

    if not row.get("pre_AP_series") or not row.get("pre_PVP_series"):
        return None
    label_path = cohort / row["pre_labels"]
    legend_path = Path(str(label_path).replace(".nii.gz", ".json"))
    legend = {name: int(value) for value, name in json.loads(legend_path.read_text()).items()}
    label_map = sitk.ReadImage(str(label_path))
    out = {}
    for phase, names in (("AP", ("ap_enhancement", "ap_texture")), ("PVP", ("pvp_washout", "pvp_texture"))):
        image, _ = read_ct_series(cohort / row[f"pre_{phase}_series"])
        # The label map is on the study's grid but may store its slices in the other order (feet-first).
        labels = sitk.GetArrayFromImage(sitk.Resample(label_map, image, sitk.Transform(), sitk.sitkNearestNeighbor))
        erode = np.ones((3, 3, 3), dtype=bool)
        viable = ndimage.binary_erosion(labels == legend["viable"], erode)
        liver = ndimage.binary_erosion(labels == legend["liver"], erode)
        if viable.sum() < 20:
            viable = labels == legend["viable"]
        if viable.sum() == 0:
            raise InputError(f"{label_path}: no viable tumour in the label map")
        hu = sitk.GetArrayFromImage(image).astype(np.float32)
        contrast, texture = _region_medians_and_texture(hu, viable, liver, image.GetSpacing()[::-1])
        out[names[0]], out[names[1]] = contrast, texture
    return out


def measure(cohorts: Sequence[Path], progress: bool = True) -> dict[str, object]:
    """Features, hidden and visible values of every case with both phases, and the regressions' R^2."""
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold, cross_val_predict
    from tqdm import tqdm

    records, skipped = [], 0
    for cohort in cohorts:
        meta_path = cohort / "cohort.json"
        if not meta_path.is_file():
            raise InputError(f"{meta_path}: not found; give a cohort written by oncoplan synth liver")
        generator = json.loads(meta_path.read_text()).get("generator", "liver-1")
        if generator not in GROUND_TRUTHS or not GROUND_TRUTHS[generator].images_show_biology:
            raise InputError(f"{cohort}: generator {generator!r}; this study needs liver-2 or liver-3 cohorts")
        with open(cohort / "cohort.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        for row in tqdm(rows, desc=f"read {cohort.name}", unit="case", disable=not progress):
            feats = case_features(cohort, row)
            if feats is None:
                skipped += 1
                continue
            truth = json.loads((cohort / row["TCIA_ID"] / "truth.json").read_text())
            records.append(
                {
                    "case_id": row["TCIA_ID"],
                    "site": row.get("site", ""),
                    **feats,
                    "hidden": {
                        "vascularity": truth["profile"]["vascularity"],
                        "anthracycline": truth["profile"]["sensitivity"]["anthracycline"],
                    },
                    "visible": {
                        "vascularity": truth["visible"]["vascularity"],
                        "anthracycline": truth["visible"]["sensitivity"]["anthracycline"],
                    },
                }
            )
    if len(records) < 2 * FOLDS:
        raise InputError(f"{len(records)} cases with both AP and PVP series; the study needs at least {2 * FOLDS}")
    x = np.array([[r[f] for f in FEATURES] for r in records])
    results = {}
    for target in TARGETS:
        hidden = np.array([r["hidden"][target] for r in records])
        visible = np.array([r["visible"][target] for r in records])
        predicted = cross_val_predict(LinearRegression(), x, hidden, cv=KFold(FOLDS, shuffle=True, random_state=0))
        for r, p in zip(records, predicted, strict=True):
            r.setdefault("predicted", {})[target] = float(p)
        ceiling = float(np.corrcoef(visible, hidden)[0, 1] ** 2)
        r2 = float(r2_score(hidden, predicted))
        results[target] = {
            "cv_r2_images": r2,
            "r2_perfect_reader": ceiling,
            "share_of_ceiling": r2 / ceiling if ceiling > 0 else float("nan"),
            "coef_full_fit": dict(
                zip(FEATURES, LinearRegression().fit(x, hidden).coef_.round(5).tolist(), strict=True)
            ),
        }
    return {
        "synthetic": True,
        "cases": len(records),
        "skipped_missing_phase": skipped,
        "features": list(FEATURES),
        "results": results,
        "per_case": records,
    }


def markdown(report: dict, cohorts: Sequence[Path]) -> str:
    lines = [
        "# What the pre-treatment images show of the hidden response biology (SYNTHETIC DATA)",
        "",
        f"Cohorts: {', '.join(str(c) for c in cohorts)}; {report['cases']} cases with AP and PVP series "
        f"({report['skipped_missing_phase']} without both left out). Linear regression on "
        f"{', '.join(FEATURES)}; {FOLDS}-fold cross-validated R^2.",
        "",
        "| hidden quantity | R^2, regressor on the images | R^2, perfect reader (visible copy) | share of ceiling |",
        "|---|---|---|---|",
    ]
    for target, r in report["results"].items():
        lines.append(
            f"| {target} | {r['cv_r2_images']:.2f} | {r['r2_perfect_reader']:.2f} | {r['share_of_ceiling']:.0%} |"
        )
    lines += ["", "The other four drug-class sensitivities are not in the images (R^2 0 by construction).", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.8))
    for ax, target in zip(fig.subplots(1, 2), TARGETS, strict=True):
        hidden = [r["hidden"][target] for r in report["per_case"]]
        ax.scatter(hidden, [r["predicted"][target] for r in report["per_case"]], s=10, label="regressor on images")
        ax.scatter(hidden, [r["visible"][target] for r in report["per_case"]], s=10, alpha=0.5, label="visible copy")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        r = report["results"][target]
        ax.set_title(f"{target}: R^2 {r['cv_r2_images']:.2f} (ceiling {r['r2_perfect_reader']:.2f})", fontsize=9)
        ax.set_xlabel(f"hidden {target}")
        ax.set_ylabel("read from the images")
    fig.axes[0].legend(fontsize=7)
    fig.suptitle("SYNTHETIC: hidden biology read back from the pre-treatment CT", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cohort", type=Path, nargs="+", required=True, help="raw liver-2 or liver-3 cohorts (oncoplan synth liver)"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        report = measure(args.cohort)
    except (InputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:  # a cohort.csv or truth.json without a column or field this study reads
        where = ", ".join(str(c) for c in args.cohort)
        print(
            f"error: {where}: no {exc} in a cohort.csv or truth.json (not written by oncoplan synth liver)",
            file=sys.stderr,
        )
        return 2
    with atomic_output_dir(args.out) as scratch:
        (scratch / "visible_biology.json").write_text(json.dumps(report, indent=1))
        (scratch / "visible_biology.md").write_text(markdown(report, args.cohort))
        plot(report, scratch / "visible_biology.png")
    print(markdown(report, args.cohort))
    return 0


if __name__ == "__main__":
    sys.exit(main())
