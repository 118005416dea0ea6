"""Contouring end to end (DICOM folder -> SEG on disk): OncoPlan's CTV app vs the stock MONAI Deploy
SDK pipeline on the same study and the same U-Net, side by side in one run.

    python -m tests.bench.contour [--slices 120] [--repeats 3] [--study DICOM_DIR] [--no-write]

Stock: the SDK's canonical graph (its ai_spleen_seg_app example): DICOMDataLoaderOperator ->
DICOMSeriesSelectorOperator -> DICOMSeriesToVolumeOperator -> MonaiBundleInferenceOperator ->
DICOMSegmentationWriterOperator, on the vision-only variant of bundles/ctv_llmseg (`text_guided: false`:
the same U-Net, preprocessing and sliding-window inferer, no text; the stock operator cannot feed a
note), exported with `monai.bundle ckpt_export` (configs embedded), the form SDK 4.0.0 runs.
OncoPlan: `python -m oncoplan.apps.ctv_contouring` as shipped: text-guided (it also runs the text
encoder) and writing RTSTRUCT + SEG, so it does strictly more work. OncoPlan warm: the same app in
the listener's warm worker (`python -m oncoplan.deploy.listener.warm_worker`, deploy/listener/warm.py), one process
for all runs: each run is one job's round trip, study folder in, files on disk out.

Each run is its own process, the two pipelines alternating after one untimed warm-up each. Inside
each process the operators' compute(), the sliding-window inferer and model loading are wrapped and
timed exclusively (time in a nested timed call counts to the inner stage only).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from oncoplan.deploy.listener.warm import WarmApp

from .report import machine, publish, tool_version, versions

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "ctv_llmseg"
KINDS = ("stock", "oncoplan", "warm")
STAGES = ("input check", "load", "model setup", "preprocess", "inference", "postprocess", "write")
STAGE_NOTES = {
    "start-up": "process start to the first operator, less stages timed before it: imports, graph construction",
    "input check": "OncoPlan's check of the input folder before the graph",
    "load": "loader, selector, series-to-volume (+ note)",
    "model setup": "stock: TorchScript load + bundle config parse; OncoPlan: bundle, LM, backend (race's pick)",
    "preprocess": "inference operator up to the inferer",
    "inference": "sliding-window inferer (+ OncoPlan's text encoder)",
    "postprocess": "inference operator after the inferer",
    "write": "SEG writer (+ OncoPlan's RTSTRUCT writer)",
    "between": "in the graph, outside timed calls (scheduler, receive/emit)",
    "teardown": "last operator to process exit (graph teardown, exit)",
}


class Clock:
    """Exclusive seconds per stage over wrapped calls, and the wall-clock span they cover."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[list] = []  # [stage, perf_counter when its current slice began]
        self.first: float | None = None  # time.time() when the first operator starts
        self.before = 0.0  # seconds timed before that (work done while the graph is built)
        self.last = 0.0  # time.time() when the last operator returned

    def timed(self, fn: Callable, stage: str, then: str | None = None, operator: bool = False) -> Callable:
        """`fn` timed as `stage`; with `then`, the caller's remaining time counts as `then`."""

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            now = time.perf_counter()
            if operator and self.first is None:
                self.first, self.before = time.time(), sum(self.totals.values())
            if self.stack:
                self.totals[self.stack[-1][0]] += now - self.stack[-1][1]
            self.stack.append([stage, now])
            try:
                return fn(*args, **kwargs)
            finally:
                end = time.perf_counter()
                inner, since = self.stack.pop()
                self.totals[inner] += end - since
                if self.stack:
                    self.stack[-1][1] = end
                    self.stack[-1][0] = then or self.stack[-1][0]
                if operator:
                    self.last = time.time()

        return wrapper


def _instrument(clock: Clock, kind: str) -> None:
    """Wrap the pipeline's operators (and the inner steps of its inference operator) in `clock`."""
    import torch
    from monai.deploy.operators import dicom_data_loader_operator as loader
    from monai.deploy.operators import dicom_series_selector_operator as selector
    from monai.deploy.operators import dicom_series_to_volume_operator as volume
    from monai.inferers import SlidingWindowInferer

    ops = {
        loader.DICOMDataLoaderOperator: "load",
        selector.DICOMSeriesSelectorOperator: "load",
        volume.DICOMSeriesToVolumeOperator: "load",
    }
    SlidingWindowInferer.__call__ = clock.timed(SlidingWindowInferer.__call__, "inference", then="postprocess")
    if kind == "stock":
        from monai.deploy.operators.dicom_seg_writer_operator import DICOMSegmentationWriterOperator
        from monai.deploy.operators.monai_bundle_inference_operator import MonaiBundleInferenceOperator as Infer

        ops |= {Infer: "preprocess", DICOMSegmentationWriterOperator: "write"}
        Infer._init_config = clock.timed(Infer._init_config, "model setup")
        torch.jit.load = clock.timed(torch.jit.load, "model setup")  # TorchScriptModel loads on first call
    else:
        from oncoplan.apps import runner
        from oncoplan.operators.clinical_note import ClinicalNoteOperator
        from oncoplan.operators.ctv_inference import CTVInferenceOperator
        from oncoplan.operators.ctv_writers import CTVRTStructWriterOperator, CTVSegWriterOperator

        ops |= {ClinicalNoteOperator: "load", CTVInferenceOperator: "preprocess"}
        ops |= {CTVRTStructWriterOperator: "write", CTVSegWriterOperator: "write"}
        runner.check_input_folder = clock.timed(runner.check_input_folder, "input check")
        build = CTVInferenceOperator.predictor

        def predictor(op):
            built = build(op)  # the text encoder's module is imported here: wrap it only now
            if not hasattr(built.network.context, "__wrapped__"):
                built.network.context = clock.timed(built.network.context, "inference")
            return built

        CTVInferenceOperator.predictor = clock.timed(predictor, "model setup")
    for op, stage in ops.items():
        op.compute = clock.timed(op.compute, stage, operator=True)


def _run_stock(argv: list[str]) -> None:
    """The SDK's example graph (ai_spleen_seg_app) with the CTV as its one segment."""
    from monai.deploy.conditions import CountCondition
    from monai.deploy.core import Application, Image, IOType
    from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
    from monai.deploy.operators.dicom_seg_writer_operator import DICOMSegmentationWriterOperator, SegmentDescription
    from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
    from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator
    from monai.deploy.operators.monai_bundle_inference_operator import IOMapping, MonaiBundleInferenceOperator
    from pydicom.sr.codedict import codes

    # The SDK example's own kind of JSON rules (OncoPlan's apps choose by operators/series_rules.py).
    ct_rules = '{"selections": [{"name": "CT", "conditions": {"Modality": "(?i)^CT$"}}]}'

    class StockSegApp(Application):
        def compose(self) -> None:
            ctx = Application.init_app_context(self.argv)
            loader = DICOMDataLoaderOperator(
                self, CountCondition(self, 1), input_folder=Path(ctx.input_path), name="loader"
            )
            selector = DICOMSeriesSelectorOperator(self, rules=ct_rules, name="selector")
            to_volume = DICOMSeriesToVolumeOperator(self, name="volume")
            infer = MonaiBundleInferenceOperator(
                self,
                input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
                output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)],
                app_context=ctx,
                bundle_path=Path(ctx.model_path),
                name="bundle_inference",
            )
            segment = SegmentDescription(
                "CTV", codes.SCT.Tissue, codes.SCT.ClinicalTargetVolume, "CTV vision-only", "1"
            )
            writer = DICOMSegmentationWriterOperator(
                self, segment_descriptions=[segment], output_folder=Path(ctx.output_path), name="seg_writer"
            )
            self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
            self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
            self.add_flow(to_volume, infer, {("image", "image")})
            self.add_flow(selector, writer, {("study_selected_series_list", "study_selected_series_list")})
            self.add_flow(infer, writer, {("pred", "seg_image")})

    StockSegApp(argv).run()


def child(kind: str, args: list[str]) -> int:
    """One timed pipeline run (this process is started by `_launch`); stage seconds go to $BENCH_TIMES."""
    clock = Clock()
    _instrument(clock, kind)
    if kind == "stock":
        _run_stock([sys.executable, kind, *args])  # Holoscan drops argv[0], the interpreter
        rc = 0
    else:  # what `python -m oncoplan.apps.ctv_contouring ARGS` runs
        from oncoplan.apps.ctv_contouring.app import CTVContouringApp
        from oncoplan.apps.runner import main as run_app

        rc = run_app(CTVContouringApp, [CTVContouringApp.__module__, *args])
    times = {"first": clock.first, "before": clock.before, "last": clock.last, **clock.totals}
    Path(os.environ["BENCH_TIMES"]).write_text(json.dumps(times))
    if kind == "oncoplan":  # ... and leaves as its __main__ does; the SDK's examples exit normally
        from oncoplan.apps.runner import exit_now

        exit_now(rc)
    return rc


LIBRARIES = ("torch", "monai", "monai-deploy-app-sdk", "holoscan-cu13", "onnxruntime", "openvino", "highdicom")


def _launch(kind: str, args: list[str], log: Path) -> dict[str, float]:
    """Wall seconds of one pipeline process, with its start-up and stages (exclusive seconds)."""
    times = log.with_suffix(".json")
    env = os.environ | {"BENCH_TIMES": str(times)}
    launched, t0 = time.time(), time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "tests.bench.contour", "_child", kind, *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"{kind} failed (exit {done.returncode}):\n{log.read_text()[-3000:]}")
    t = json.loads(times.read_text())
    stages = {s: t.get(s, 0.0) for s in STAGES}
    startup = t["first"] - launched - t["before"]  # imports and graph construction
    teardown = launched + wall - t["last"]  # after the last operator: Holoscan teardown, moving files, exit
    other = wall - startup - teardown - sum(stages.values())  # in the graph, between the timed calls
    return {"wall": wall, "start-up": startup, **stages, "between": other, "teardown": teardown}


def _warm_run(warm, args: list[str], log: Path) -> dict[str, float]:
    """Wall seconds of one study through the warm worker (its output in `log`)."""
    t0 = time.perf_counter()
    rc = warm.run(["contour", *args], log, 3600)
    wall = time.perf_counter() - t0
    if rc:
        raise RuntimeError(f"warm worker failed (exit {rc}):\n{log.read_text()[-3000:]}")
    return {"wall": wall}


def export_vision_only(bundle: Path, out: Path) -> Path:
    """The bundle's vision-only variant as SDK 4.0.0 runs it: TorchScript with its configs embedded."""
    from monai.bundle import ckpt_export

    config = json.loads((bundle / "configs" / "inference.json").read_text()) | {"text_guided": False}
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    # The stock operator makes one input port per network input and would wait forever for a note.
    del meta["network_data_format"]["inputs"]["note"]
    out.mkdir(parents=True)
    (out / "inference.json").write_text(json.dumps(config))
    (out / "metadata.json").write_text(json.dumps(meta))
    ts = out / "ctv_vision_only.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts),
        ckpt_file=str(bundle / "models" / "vision_only.pt"),
        meta_file=str(out / "metadata.json"),
        config_file=str(out / "inference.json"),
        use_trace=True,  # scripting fails on the optional `notes: Sequence[str]` of forward()
        input_shape=[1, 1, *config["roi_size"]],
        bundle_root=str(bundle),
    )
    return ts


def _study(root: Path, slices: int) -> Path:
    """A generated full-size breast study re-sliced to `slices` slices, clinical.json beside it."""
    from oncoplan.training.synth.cohort import generate_cohort

    from .memory import reslice

    cohort = generate_cohort("breast", root / "breast", 1, seed=0, size="full", progress=False)
    case = next(p for p in sorted(cohort.iterdir()) if p.is_dir())
    study = reslice(case / "dicom", root / "study" / "dicom", slices)
    shutil.copy2(case / "clinical.json", study.parent / "clinical.json")  # the note, beside the input
    return study


def _checks(study: Path, files: dict[str, list[Path]]) -> tuple[dict[str, str], float, str]:
    """dciodvfy errors / warnings per pipeline's files, the Dice of the two SEG masks, the CT's shape."""
    import highdicom as hd
    import pydicom
    from pydicom.misc import is_dicom

    from oncoplan.rtstruct import sort_slices

    from ..dicom_validate import problems

    ours = ["ctv_rtstruct.dcm", "ctv_seg.dcm"]
    if len(files["stock"]) != 1 or any([p.name for p in files[k]] != ours for k in KINDS[1:]):
        raise RuntimeError(f"missing or unexpected outputs: {files}")
    found = {}
    for kind, paths in files.items():
        lines = {p.name: problems(p) for p in paths}
        errors = sum(ln.startswith("Error") for v in lines.values() for ln in v)
        warnings = sum(ln.startswith("Warning") for v in lines.values() for ln in v)
        first = next((ln for v in lines.values() for ln in v), "")
        found[kind] = f"{errors} / {warnings}" + (f" (`{first.strip()}`)" if first else "")
    ct = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(study.iterdir()) if is_dicom(p)]
    uids = [ds.SOPInstanceUID for ds in sort_slices(ct)]
    masks = [
        hd.seg.segread(files[k][-1]).get_pixels_by_source_instance(
            source_sop_instance_uids=uids,
            segment_numbers=[1],
            ignore_spatial_locations=True,
            assert_missing_frames_are_empty=True,
        )[..., 0]
        > 0
        for k in KINDS
    ]
    dice = 2 * (masks[0] & masks[1]).sum() / max(1, masks[0].sum() + masks[1].sum())
    if not (masks[1] == masks[2]).all():
        raise RuntimeError("the warm worker's CTV differs from the fresh process's")
    return found, dice, f"{len(ct)} x {ct[0].Rows} x {ct[0].Columns}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        return child(argv[1], argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=120, help="slices of the generated 512 x 512 CT")
    ap.add_argument("--study", type=Path, help="a DICOM CT folder instead (note: --note or clinical.json beside)")
    ap.add_argument("--note", help="clinical note for OncoPlan's app (default: clinical.json in or beside)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")
    args = ap.parse_args(argv)
    stack = 32 * 2**20  # Holoscan's recommended stack, inherited by the pipelines' processes
    hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    resource.setrlimit(resource.RLIMIT_STACK, (stack if hard == resource.RLIM_INFINITY else min(stack, hard), hard))
    root = Path(tempfile.mkdtemp(prefix="oncoplan-bench-contour-"))
    try:
        study = args.study.absolute() if args.study else _study(root, args.slices)
        model = export_vision_only(BUNDLE, root / "stock_bundle")
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in KINDS}
        first = 0.0
        warm = WarmApp("oncoplan.apps.ctv_contouring.app", root / "warm_worker.log")
        for i in range(args.repeats + 1):  # run 0 is the untimed warm-up (file cache, ONNX export cache)
            for kind in KINDS if i % 2 else KINDS[::-1]:
                out = root / "out" / f"{kind}{i}"
                app_args = ["-i", str(study), "-o", str(out)]
                app_args += ["-m", str(model)] if kind == "stock" else (["--note", args.note] if args.note else [])
                log = root / f"{kind}{i}.log"
                result = _warm_run(warm, app_args, log) if kind == "warm" else _launch(kind, app_args, log)
                if i:
                    runs[kind].append(result)
                elif kind == "warm":
                    first = result["wall"]  # a fresh worker: imports and model loading included
                print(f"run {i} {kind}: {result['wall']:.1f} s", file=sys.stderr)
        files = {k: sorted((root / "out" / f"{k}{args.repeats}").glob("*.dcm")) for k in KINDS}
        valid, dice, shape = _checks(study, files)
        ran_on = re.findall(r"U-Net on (.+)", (root / f"oncoplan{args.repeats}.log").read_text())
    finally:
        warm.stop()
        shutil.rmtree(root, ignore_errors=True)
    med = {k: {s: statistics.median(r[s] for r in runs[k]) for s in runs[k][0]} for k in KINDS}
    ratio = med["oncoplan"]["wall"] / med["stock"]["wall"]
    warm_ratio = med["warm"]["wall"] / med["stock"]["wall"]
    command = "python -m tests.bench.contour" + (f" --study {args.study}" if args.study else f" --slices {args.slices}")
    rows = [
        f"| {s} | {STAGE_NOTES.get(s, '')} | {med['stock'][s]:.2f} | {med['oncoplan'][s]:.2f} |"
        for s in ("start-up", *STAGES, "between", "teardown")
    ]
    lines = [
        f"Command: `{command} --repeats {args.repeats}`  ",
        f"Input: {'`' + str(args.study) + '`' if args.study else 'a generated breast study (seed 0)'}, "
        f"CT {shape} (slices x rows x columns); each pipeline in its own process, alternating, median of "
        f"{args.repeats} after one untimed warm-up each.  ",
        f"Machine: {machine()}.  ",
        f"Versions: {versions(*LIBRARIES)}, {tool_version(['dciodvfy', '-version'])}.  ",
        "Stock: the SDK's canonical graph (DICOMSeriesToVolumeOperator -> MonaiBundleInferenceOperator -> "
        "DICOMSegmentationWriterOperator) on the **vision-only** variant of `bundles/ctv_llmseg` (same U-Net, "
        "preprocessing and sliding-window inferer; the stock operator cannot feed a note), TorchScript from "
        "`monai.bundle ckpt_export` (traced), eager PyTorch on the CPU. OncoPlan: the CTV app as shipped, "
        "**text-guided** (it also runs the text encoder) and writing RTSTRUCT + SEG: strictly more work; "
        f"its U-Net ran on {ran_on[-1].strip() if ran_on else 'an unlogged backend'} (the start-up race's pick).",
        "",
        "| pipeline | writes | wall (median) | dciodvfy errors / warnings |",
        "|---|---|---|---|",
        f"| stock MONAI Deploy SDK | SEG | {med['stock']['wall']:.1f} s | {valid['stock']} |",
        f"| OncoPlan CTV app | RTSTRUCT + SEG | {med['oncoplan']['wall']:.1f} s | {valid['oncoplan']} |",
        f"| OncoPlan CTV app, warm worker | RTSTRUCT + SEG | {med['warm']['wall']:.1f} s | {valid['warm']} |",
        "",
        f"OncoPlan / stock wall time, a fresh process per study (as `oncoplan contour` and a MAP run): "
        f"**{ratio:.2f}x**; target <= 0.5x: **{'met' if ratio <= 0.5 else 'NOT met'}**.  ",
        f"OncoPlan warm worker / stock, per study (the listener's default for app routes; the worker's first "
        f"study, imports and model loading included, took {first:.1f} s): **{warm_ratio:.2f}x**; target <= 0.5x: "
        f"**{'met' if warm_ratio <= 0.5 else 'NOT met'}**. The stock SDK has no warm mode: a MAP runs once per "
        "study, so it pays its start-up every time. The warm worker's CTV is checked voxel-identical to the fresh "
        "process's.  ",
        f"Dice of the stock SEG vs OncoPlan's SEG: {dice:.3f} (different models, vision-only vs text-guided: "
        "reported, not asserted; a side named only in the note is a guess for the vision-only model).",
        "",
        "Where the time goes (median seconds per stage, each stage's own median; exclusive: time in a nested "
        "timed call counts to the inner stage only):",
        "",
        "| stage | what | stock | OncoPlan |",
        "|---|---|---|---|",
        *rows,
        f"| wall | | {med['stock']['wall']:.2f} | {med['oncoplan']['wall']:.2f} |",
    ]
    return publish("Contouring end to end", lines, write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
