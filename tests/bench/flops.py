"""Efficiency: each shipped network's FLOPs per inference call (PyTorch's FlopCounterMode) against
the machine's measured float32 matmul rate, i.e. the fraction of peak the network reaches.

    python -m tests.bench.flops [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from oncoplan.runtime.bundles import bundle_parser, load_network

from .report import machine, median_seconds, publish, versions

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
CPU = {"device": "$torch.device('cpu')"}


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 GEMM rate (FLOP/s) with every core: the practical peak for dense math here."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats)


def _calls():
    """(name, callable) for one inference call of each network as its app or planner runs it."""
    ctv = bundle_parser(BUNDLES / "ctv_llmseg", overrides=CPU)
    unet, roi = load_network(ctv).unet, ctv.get_parsed_content("roi_size")
    context = torch.randn(1, 2, unet.text_dim)
    x = torch.rand(2, 1, *roi)
    yield f"CTV U-Net, 2 windows {tuple(roi)}", lambda: unet(x, context)
    ast = bundle_parser(BUNDLES / "tace_assistant", overrides=CPU)
    dyn_net, roi = load_network(ast), ast.get_parsed_content("roi_size")
    xa = torch.rand(2, 1, *roi)
    yield f"TACE assistant DynUNet, 2 windows {tuple(roi)}", lambda: dyn_net(xa)
    dyn = bundle_parser(BUNDLES / "tace_dynamics", overrides=CPU)
    net, roi = load_network(dyn), dyn.get_parsed_content("roi_size")
    in_ch = net.input_channels  # noisy patch, image conditions, then the compartments
    xd, t = torch.rand(16, in_ch, *roi), torch.full((16,), 10, dtype=torch.long)
    yield f"TACE dynamics UNet, 1 DDIM step, batch 16 {tuple(roi)}", lambda: net(xd, t)
    srv = bundle_parser(BUNDLES / "tace_survival", overrides=CPU)
    yield "TACE survival network, 1 case", _survival_call(srv)


def _survival_call(parser):
    net = load_network(parser)
    roi, patches = parser.get_parsed_content("roi_size"), int(parser.get_parsed_content("eval_patches"))
    x = torch.rand(1, patches, 2 * net.in_channels, *roi)  # pre and post [CT, mask] per patch
    return lambda: net(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    peak = matmul_rate(repeats=args.repeats)
    rows = []
    with torch.no_grad():
        for name, call in _calls():
            counter = FlopCounterMode(display=False)
            with counter:
                call()
            flops = counter.get_total_flops()
            seconds = median_seconds(call, args.repeats)
            rate = flops / seconds
            rows.append(
                f"| {name} | {flops / 1e9:.1f} | {seconds * 1e3:.0f} ms | {rate / 1e9:.1f} | {rate / peak:.1%} |"
            )
    lines = [
        f"Command: `python -m tests.bench.flops --repeats {args.repeats}`  ",
        "FLOPs counted by `torch.utils.flop_counter.FlopCounterMode` (convolutions, matmuls, attention; not "
        "norms or activations); time is the median eager call.  ",
        f"Machine: {machine()}; torch threads {torch.get_num_threads()}; measured float32 matmul "
        f"(2048 x 2048): **{peak / 1e9:.0f} GFLOP/s**.  ",
        f"Versions: {versions('torch', 'monai')}.",
        "",
        "| network, call | GFLOP | time | GFLOP/s | of matmul rate |",
        "|---|---|---|---|---|",
        *rows,
    ]
    return publish("Efficiency (FLOPs)", lines, write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
