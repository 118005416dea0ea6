"""Inference backends: ONNX Runtime (CPU) vs eager PyTorch on the same network, weights and input,
side by side; with the parity the apps issue asks for (max |dp| <= 1e-4, argmax agreement).

    python -m tests.bench.backends [--repeats 10] [--batch 2]

Networks: the shipped CTV U-Net (text-guided, one window of its ROI) and the shipped TACE
assistant DynUNet (one window of its ROI), each as its app runs it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from oncoplan.operators.inference_backend import select_backend
from oncoplan.training.bundle_loading import bundle_parser, load_network

from .report import machine, median_seconds, publish, versions

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def _caller(forward, image: torch.Tensor, context: torch.Tensor | None):
    return (lambda: forward(image)) if context is None else (lambda: forward(image, context))


def _networks():
    cpu = {"device": "$torch.device('cpu')"}
    ctv = bundle_parser(BUNDLES / "ctv_llmseg", overrides=cpu)
    unet = load_network(ctv).unet  # the U-Net the predictor accelerates; the text encoder runs once per note
    context = torch.randn(1, 2, unet.text_dim) if getattr(unet, "text_dim", None) else None
    yield "CTV U-Net (ctv_llmseg)", unet, tuple(ctv.get_parsed_content("roi_size")), context
    ast = bundle_parser(BUNDLES / "tace_assistant", overrides=cpu)
    yield "TACE assistant DynUNet", load_network(ast), tuple(ast.get_parsed_content("roi_size")), None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch", type=int, default=2, help="windows per call (the inferers' sw_batch_size)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for name, net, roi, context in _networks():
            net.eval()
            image = torch.rand(args.batch, 1, *roi)
            fast, _ = select_backend(net, roi, Path(cache), prefer=("onnxruntime",))
            call_eager, call_ort = _caller(net, image, context), _caller(fast, image, context)
            with torch.no_grad():
                eager, ort = torch.softmax(call_eager(), 1), torch.softmax(call_ort(), 1)
                t_eager, t_ort = median_seconds(call_eager, args.repeats, 2), median_seconds(call_ort, args.repeats, 2)
            diff = float((eager - ort).abs().max())
            agree = float((eager.argmax(1) == ort.argmax(1)).float().mean())
            rows.append(
                f"| {name} | {args.batch} x {roi} | {t_eager * 1e3:.1f} ms | {t_ort * 1e3:.1f} ms | "
                f"{t_eager / t_ort:.2f}x | {diff:.1e} | {agree * 100:.3f}% |"
            )
    lines = [
        f"Command: `python -m tests.bench.backends --repeats {args.repeats} --batch {args.batch}`  ",
        f"Median of {args.repeats} calls after two warm-ups; shipped weights; random input.  ",
        f"Machine: {machine()}; torch threads {torch.get_num_threads()}.  ",
        f"Versions: {versions('torch', 'onnxruntime', 'monai')}.",
        "",
        "| network | input | eager PyTorch | ONNX Runtime | speed-up | max abs diff (probabilities) | argmax agree |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "TensorRT fp16: not measured (no GPU on this machine).",
    ]
    return publish("Inference backends", lines, write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
