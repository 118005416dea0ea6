"""Inference backends: ONNX Runtime and OpenVINO (CPU, both from the same ONNX export) vs eager
PyTorch on the same network, weights and input, side by side; with the parity the apps issue asks for
(max |dp| <= 1e-4, argmax agreement).

    python -m tests.bench.backends [--repeats 10] [--batch 2] [--gpu]

`--gpu`: TensorRT fp16 (MONAI `trt_compile`) vs eager PyTorch, both on CUDA, same parity columns.

Networks: the shipped CTV U-Net (text-guided, windows of its ROI), the shipped TACE assistant
DynUNet (windows of its ROI) and the shipped TACE dynamics UNet (one DDIM step on a batch of
candidate patches), each as its app runs it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from oncoplan.runtime.backends import dynamics_signature, select_backend, unet_signature
from oncoplan.runtime.bundles import bundle_parser, load_network

from .report import machine, median_seconds, publish, versions

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def _networks(batch: int, device: str):
    """(name, network, signature, call arguments, what to compare) as each app runs the network."""
    from oncoplan.tace.dynamics import condition

    place = {"device": f"$torch.device('{device}')"}
    ctv = bundle_parser(BUNDLES / "ctv_llmseg", overrides=place)
    unet = load_network(ctv).unet  # the U-Net the predictor accelerates; the text encoder runs once per note
    roi = tuple(ctv.get_parsed_content("roi_size"))
    text_dim = getattr(unet, "text_dim", None)
    args = (torch.rand(batch, 1, *roi),) + ((torch.randn(1, 2, text_dim),) if text_dim else ())
    args = tuple(a.to(device) for a in args)
    yield "CTV U-Net (ctv_llmseg)", unet, unet_signature(roi, text_dim), args, {}, "probabilities"
    ast = bundle_parser(BUNDLES / "tace_assistant", overrides=place)
    roi = tuple(ast.get_parsed_content("roi_size"))
    net = load_network(ast)
    image = torch.rand(batch, 1, *roi, device=device)
    yield "TACE assistant DynUNet", net, unet_signature(roi), (image,), {}, "probabilities"
    dyn = bundle_parser(BUNDLES / "tace_dynamics", overrides=place)
    patch = tuple(dyn.get_parsed_content("roi_size"))
    net = load_network(dyn)
    mask = (torch.rand(batch, 1, *patch) > 0.5).float()
    layout = (torch.rand(batch, 3, *patch) > 0.7).float() * mask  # viable, necrosis, Lipiodol channels
    x = torch.cat([torch.randn(batch, 1, *patch), condition(torch.rand(batch, 1, *patch), mask, layout)], 1)
    signature = dynamics_signature(net.input_channels, patch)
    x = x.to(device)
    kwargs = {"timesteps": torch.Tensor((500,)).to(device), "context": None}  # one DDIM step, as the sampler calls it
    yield "TACE dynamics UNet (one DDIM step)", net, signature, (x,), kwargs, "noise"


def _call(forward, args: tuple, kwargs: dict):
    if args[0].device.type == "cuda":  # time the kernels, not their launch
        return lambda: (forward(*args, **kwargs), torch.cuda.synchronize())[0]
    return lambda: forward(*args, **kwargs)


def _row(
    name: str, shape: tuple, eager: torch.Tensor, out: torch.Tensor, kind: str, t_eager: float, t_fast: float, used: str
) -> str:
    """One table row: timings, speed-up and parity (on probabilities for segmenters, raw otherwise)."""
    if kind == "probabilities":
        eager, out = torch.softmax(eager, 1), torch.softmax(out, 1)
        agree = f"{float((eager.argmax(1) == out.argmax(1)).float().mean()) * 100:.3f}%"
    else:
        agree = "-"
    diff = float((eager - out).abs().max())
    return (
        f"| {name} | {shape} | {t_eager * 1e3:.1f} ms | {t_fast * 1e3:.1f} ms ({used}) | "
        f"{t_eager / t_fast:.2f}x | {diff:.1e} ({kind}) | {agree} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch", type=int, default=2, help="windows per call (the inferers' sw_batch_size)")
    ap.add_argument("--gpu", action="store_true", help="TensorRT fp16 vs eager PyTorch on CUDA instead")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.gpu and not torch.cuda.is_available():
        print("backends --gpu: no CUDA device on this machine; nothing measured", file=sys.stderr)
        return 2
    device, fast_backends = ("cuda", ("tensorrt",)) if args.gpu else ("cpu", ("onnxruntime", "openvino"))
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for name, net, signature, call_args, kwargs, kind in _networks(args.batch, device):
            net.eval()
            call_eager = _call(net, call_args, kwargs)
            with torch.no_grad():
                eager = call_eager().float()
                t_eager = median_seconds(call_eager, args.repeats, 2)
            for backend in fast_backends:
                fast, used = select_backend(net, signature, Path(cache), prefer=(backend,))
                call_fast = _call(fast, call_args, kwargs)
                with torch.no_grad():
                    out = call_fast().float()
                    t_fast = median_seconds(call_fast, args.repeats, 2)
                rows.append(_row(name, tuple(call_args[0].shape), eager, out, kind, t_eager, t_fast, used))
    gpu = f"; GPU {torch.cuda.get_device_name(0)}" if args.gpu else ""
    flags = f" --repeats {args.repeats} --batch {args.batch}" + (" --gpu" if args.gpu else "")
    lines = [
        f"Command: `python -m tests.bench.backends{flags}`  ",
        f"Median of {args.repeats} calls after two warm-ups; shipped weights; random input.  ",
        f"Machine: {machine()}{gpu}; torch threads {torch.get_num_threads()}.  ",
        f"Versions: {versions('torch', 'onnxruntime', 'openvino', 'monai', *(['tensorrt'] if args.gpu else []))}.",
        "",
        f"| network | input | eager PyTorch ({device}) | accelerated | speed-up | max abs diff | argmax agree |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    if not args.gpu:
        lines += ["", "TensorRT fp16: `--gpu` on a machine with CUDA and TensorRT (section Inference backends (GPU))."]
    return publish("Inference backends (GPU)" if args.gpu else "Inference backends", lines, write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
