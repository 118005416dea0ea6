"""Memory: peak RSS of each app on a 512 x 512 x 300 CT (the CTV app on a breast study, the TACE app
on a pre-treatment liver study with two phases of 300 slices each).

    python -m tests.bench.memory [--slices 300] [--settings cpu]

The studies are generated full-size studies re-sliced to `--slices` thin slices (same anatomy,
same in-plane grid, new series), so the apps see a realistic long series.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

from oncoplan.training.synth.cohort import generate_cohort

from .report import machine, publish, versions


def reslice(series: Path, out: Path, slices: int) -> Path:
    """`series` resampled along its slice axis to `slices` slices, written as a new DICOM series."""
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series))
    image = sitk.ReadImage(files, sitk.sitkFloat32)
    size, spacing = list(image.GetSize()), list(image.GetSpacing())
    extent = spacing[2] * (size[2] - 1)
    new_spacing = [spacing[0], spacing[1], extent / (slices - 1)]
    thin = sitk.Resample(
        image,
        [size[0], size[1], slices],
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        new_spacing,
        image.GetDirection(),
        -1024.0,
        sitk.sitkFloat32,
    )
    hu = sitk.GetArrayFromImage(thin)  # (slices, rows, cols)
    template = pydicom.dcmread(files[0])
    slope, intercept = float(template.get("RescaleSlope", 1)), float(template.get("RescaleIntercept", 0))
    dtype = np.int16 if int(template.PixelRepresentation) else np.uint16
    info = np.iinfo(dtype)
    series_uid = generate_uid()
    out.mkdir(parents=True)
    for k in range(slices):
        ds = template.copy()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [round(v, 4) for v in thin.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.SliceThickness = round(new_spacing[2], 4)
        if "SliceLocation" in ds:
            del ds.SliceLocation
        stored = np.clip(np.round((hu[k] - intercept) / slope), info.min, info.max).astype(dtype)
        ds.PixelData = stored.tobytes()
        ds.save_as(out / f"CT{k + 1:04d}.dcm", enforce_file_format=True)
    return out


def _measure(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of `command`, measured in a fresh child process."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        f"subprocess.run({command!r}, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1]) / 2**20  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--settings", default="cpu", help="TACE search settings")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="oncoplan-bench-memory-"))
    try:
        breast = generate_cohort("breast", root / "breast", 1, seed=0, size="full", progress=False)
        case = next(p for p in sorted(breast.iterdir()) if p.is_dir())
        ctv_in = reslice(case / "dicom", root / "ctv_in" / "dicom", args.slices)
        shutil.copy2(case / "clinical.json", ctv_in.parent / "clinical.json")  # the note, beside the input
        liver = generate_cohort("liver", root / "liver", 1, seed=0, size="full", progress=False)
        pre = next(liver.glob("*/dicom/pre"))
        tace_in = root / "tace_in"
        for series in sorted(p for p in pre.iterdir() if p.is_dir()):
            reslice(series, tace_in / series.name, args.slices)
        rows = []
        oncoplan = [sys.executable, "-m", "oncoplan"]
        runs = {
            "CTV contouring (`oncoplan contour`)": [*oncoplan, "contour", "-i", str(ctv_in), "-o", str(root / "o1")],
            f"TACE planning (`oncoplan plan --settings {args.settings}`)": [
                *oncoplan,
                "plan",
                "-i",
                str(tace_in),
                "-o",
                str(root / "o2"),
                "--settings",
                args.settings,
            ],
        }
        for name, command in runs.items():
            wall, peak = _measure(command)
            rows.append(
                f"| {name} | {args.slices} x 512 x 512 | {wall:.0f} s | {peak:.2f} GB | {'yes' if peak <= 6 else 'NO'} |"  # noqa: E501
            )
        plan = json.loads((root / "o2" / "plan.json").read_text())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lines = [
        f"Command: `python -m tests.bench.memory --slices {args.slices} --settings {args.settings}`  ",
        f"Inputs: generated full-size studies (breast seed 0; liver seed 0, arterial + portal-venous) re-sliced to "
        f"{args.slices} slices; peak RSS of the app process (`getrusage` of the child), wall time including imports.  ",
        f"Machine: {machine()}.  ",
        f"Versions: {versions('torch', 'monai', 'monai-deploy-app-sdk', 'holoscan-cu13')}.  ",
        f"TACE plan stages (s): {json.dumps({k: round(v) for k, v in plan['stage_timing_s'].items()})}.",
        "",
        "| app | CT | wall | peak RSS | <= 6 GB |",
        "|---|---|---|---|---|",
        *rows,
    ]
    return publish("Memory", lines, write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
