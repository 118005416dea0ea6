"""Prepare a liver TACE cohort for the world-model bundles (seed A.1): one command, one folder.

For every case of a cohort CSV (the synthetic cohort's `cohort.csv`, or a TCIA export indexed
into the same columns: `<pre|post>_<NC|AP|PVP>_series` folders and `pre_seg`/`post_seg`
DICOM-SEG or `pre_labels`/`post_labels` NIfTI maps) it

1. reads the pre- and post-treatment CT of each phase present in both studies,
2. registers post onto pre per phase (post-AP -> pre-AP, post-PVP -> pre-PVP; rigid then
   B-spline) and carries the post label map through the same transform,
3. resamples everything onto one grid at `spacing` (seed A.1: 0.8 x 0.8 x 3.0 mm), with the
   pre-treatment arterial series beside the portal-venous one (`pre_arterial_image`) where both exist,
4. filters label islands under 300 voxels of the A.1 grid (576 mm3, the same volume on any grid),

and writes NIfTI files, `datalist.json` (the bundles' input) and `registration.json/.md`
(liver Dice of post vs pre before and after registration: the measured improvement).

    python -m oncoplan.training.tace.prepare --cohort DIR --out DIR [--spacing 0.8,0.8,3.0]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from oncoplan.errors import InputError
from oncoplan.stats import bootstrap_ci
from oncoplan.tace.actions import ACTION_BASE, Protocol
from oncoplan.training.tace import preprocess as P

PHASES = ("PVP", "AP")  # model input: the first phase present in both studies


def _legend(path: Path) -> dict[int, str]:
    legend = path.with_name(path.name.replace(".nii.gz", ".json"))
    if not legend.exists():
        raise InputError(f"{path}: label map has no legend file {legend.name}")
    return {int(k): v for k, v in json.loads(legend.read_text()).items()}


def _labels(row: pd.Series, study: str, cohort: Path, reference: sitk.Image, source: str) -> sitk.Image:
    """The study's label map on `reference`'s grid, from DICOM-SEG or NIfTI (+ legend)."""
    if source == "seg":
        return P.read_seg_labels(cohort / str(row[f"{study}_seg"]), reference)
    path = cohort / str(row[f"{study}_labels"])
    if not path.exists():
        raise InputError(f"{path}: label map not found")
    return P.onto(P.remap_labels(sitk.ReadImage(str(path)), _legend(path)), reference, label=True)


def _series(row: pd.Series, study: str, phase: str, cohort: Path) -> Path | None:
    value = row.get(f"{study}_{phase}_series")
    return cohort / str(value) if isinstance(value, str) and value else None


def prepare_case(
    row: pd.Series, cohort: Path, out: Path, spacing: Sequence[float] | None, labels: str, deformable: bool = True
) -> tuple[dict[str, object], list[dict[str, object]]]:
    """Prepare one case into out/<case_id>/; returns its datalist entry and registration rows."""
    case_id = str(row["TCIA_ID"])
    phases = [p for p in PHASES if _series(row, "pre", p, cohort) and _series(row, "post", p, cohort)]
    if not phases:
        raise InputError(f"{cohort / 'cohort.csv'}: case {case_id} has no AP or PVP phase in both studies")
    case_out = out / case_id
    case_out.mkdir(parents=True, exist_ok=True)
    entry: dict[str, object] = {"case_id": case_id, "phase": phases[0]}
    report = []
    for phase in phases:
        pre = P.read_series(_series(row, "pre", phase, cohort))
        post = P.read_series(_series(row, "post", phase, cohort))
        grid = P.resample(pre, spacing) if spacing else pre
        pre_labels = _labels(row, "pre", cohort, pre, labels)
        post_labels = _labels(row, "post", cohort, post, labels)
        transform = P.register(pre, post, deformable=deformable)
        registered = P.onto(post_labels, grid, transform, label=True)
        pre_on_grid = P.onto(pre_labels, grid, label=True)
        report.append(
            {
                "case_id": case_id,
                "phase": phase,
                "liver_dice_before": P.liver_dice(pre_on_grid, P.onto(post_labels, grid, label=True)),
                "liver_dice_after": P.liver_dice(pre_on_grid, registered),
            }
        )
        if phase != phases[0]:
            continue  # the other phase is registered (seed A.1) and reported, the models read one
        files = {
            "pre_image": P.onto(pre, grid),
            "post_image": P.onto(post, grid, transform),
            "pre_label": _filtered(pre_on_grid),
            "post_label": _filtered(registered),
        }
        arterial = _series(row, "pre", "AP", cohort) if phase == "PVP" else None
        if arterial is not None:
            # The pre-treatment arterial phase on the same grid, by physical position (one study, one frame of
            # reference, seconds apart): what the world model reads of the tumour's vascularity (issue 34).
            files["pre_arterial_image"] = P.onto(P.read_series(arterial), grid)
        for key, image in files.items():
            sitk.WriteImage(image, str(case_out / f"{key}.nii.gz"), useCompression=True)
            entry[key] = f"{case_id}/{key}.nii.gz"
    entry.update(_clinical(row))
    return entry, report


def _filtered(labels: sitk.Image) -> sitk.Image:
    min_voxels = P.min_voxels_at(labels.GetSpacing())
    out = sitk.GetImageFromArray(P.filter_label_map(sitk.GetArrayFromImage(labels), min_voxels))
    out.CopyInformation(labels)
    return out


def _clinical(row: pd.Series) -> dict[str, object]:
    """Protocol (string and multi-hot over the action base), survival and covariates for the bundles."""
    text = row.get("chemotherapy") if isinstance(row.get("chemotherapy"), str) else row.get("gold_protocol")
    protocol = Protocol.parse(text) if isinstance(text, str) and text else None
    info: dict[str, object] = {
        "protocol": str(protocol) if protocol else None,
        "protocol_multi_hot": [float(a in protocol.items) for a in ACTION_BASE] if protocol else None,
    }
    for key, name in (("OS", "os_weeks"), ("Death_1_StillAliveorLostToFU_0", "event")):
        value = row.get(key)
        info[name] = None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    return info


def prepare_cohort(
    cohort: Path,
    out: Path,
    spacing: Sequence[float] | None = P.A1_SPACING_MM,
    labels: str = "nifti",
    limit: int | None = None,
    deformable: bool = True,
    quiet: bool = False,
    workers: int = 1,
) -> dict[str, object]:
    """Prepare every case of `cohort/cohort.csv` into `out` (see module doc); returns the registration summary.

    `workers` > 1 prepares cases in that many processes (registration is the cost; cases are independent).
    """
    table = cohort / "cohort.csv"
    if not table.exists():
        raise InputError(f"{table}: cohort table not found")
    rows = pd.read_csv(table)
    if "TCIA_ID" not in rows.columns:
        raise InputError(f"{table}: no TCIA_ID column")
    if limit:
        rows = rows.head(limit)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(row, cohort, out, spacing, labels, deformable) for _, row in rows.iterrows()]
    progress = partial(tqdm, total=len(jobs), desc="prepare", unit="case", disable=quiet)
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=_one_itk_thread) as pool:
            results = list(progress(pool.map(prepare_case, *zip(*jobs, strict=True))))
    else:
        results = [prepare_case(*job) for job in progress(jobs)]
    entries = [entry for entry, _ in results]
    report = [row for _, case_report in results for row in case_report]
    summary = _summary(report)
    datalist = {"cohort": str(Path(cohort).absolute()), "spacing": spacing, "data": entries}
    (out / "datalist.json").write_text(json.dumps(datalist, indent=1))
    (out / "registration.json").write_text(json.dumps({"summary": summary, "cases": report}, indent=1))
    (out / "registration.md").write_text(_markdown(summary, cohort))
    return summary


def _one_itk_thread() -> None:
    """Each worker process registers on one thread: the processes, not ITK's threads, share the cores."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _summary(report: list[dict[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for phase in sorted({r["phase"] for r in report}):
        rows = [r for r in report if r["phase"] == phase]
        before = [float(r["liver_dice_before"]) for r in rows]
        after = [float(r["liver_dice_after"]) for r in rows]
        out[phase] = {
            "n": len(rows),
            "liver_dice_before": bootstrap_ci(before),
            "liver_dice_after": bootstrap_ci(after),
            "improvement": bootstrap_ci(list(np.subtract(after, before))),
            "improved_cases": int(sum(a > b for a, b in zip(after, before, strict=True))),
        }
    return out


def _markdown(summary: dict[str, object], cohort: Path) -> str:
    lines = [
        f"Longitudinal registration, post -> pre, on `{cohort}` (liver Dice of post vs pre label maps; "
        "mean [bootstrap 95% CI]).",
        "",
        "| phase | n | Dice before | Dice after | improvement | cases improved |",
        "|---|---|---|---|---|---|",
    ]
    fmt = lambda v: f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"  # noqa: E731
    for phase, s in summary.items():
        lines.append(
            f"| {phase} | {s['n']} | {fmt(s['liver_dice_before'])} | {fmt(s['liver_dice_after'])} | "
            f"{fmt(s['improvement'])} | {s['improved_cases']}/{s['n']} |"
        )
    return "\n".join(lines) + "\n"


def _spacing(text: str) -> tuple[float, ...] | None:
    if text == "native":
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"spacing must be 'native' or three numbers in mm, got {text!r}") from None
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"spacing must be three positive numbers in mm, got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oncoplan.training.tace.prepare", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--cohort", type=Path, required=True, help="folder with cohort.csv and the case folders")
    parser.add_argument("--out", type=Path, required=True, help="folder for NIfTI files, datalist.json, registration.*")
    parser.add_argument("--spacing", type=_spacing, default=P.A1_SPACING_MM, help="mm 'x,y,z' or 'native'")
    parser.add_argument("--labels", choices=("nifti", "seg"), default="nifti", help="read NIfTI maps or DICOM-SEG")
    parser.add_argument("--limit", type=int, help="first N cases only")
    parser.add_argument("--rigid-only", action="store_true", help="skip the B-spline step")
    parser.add_argument("--workers", type=int, default=1, help="cases prepared in parallel processes")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    from oncoplan.fsio import atomic_output_dir

    try:
        with atomic_output_dir(args.out) as scratch:
            summary = prepare_cohort(
                args.cohort,
                scratch,
                args.spacing,
                args.labels,
                args.limit,
                not args.rigid_only,
                args.quiet,
                max(1, args.workers),
            )
    except (InputError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for phase, s in summary.items():
        b, a = s["liver_dice_before"][0], s["liver_dice_after"][0]
        print(f"{phase}: liver Dice {b:.3f} -> {a:.3f} over {s['n']} cases")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
