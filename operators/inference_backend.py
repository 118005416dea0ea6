"""Runs a bundle's U-Net on the fastest backend this machine has, and says which.

Order: TensorRT (MONAI `trt_compile`, when CUDA and TensorRT are present), ONNX Runtime
(CPU, or CUDA if its provider is installed), eager PyTorch. The ONNX file is exported once
per network and input shape and cached beside the bundle's weights under a name that hashes
both, so a changed checkpoint never reuses a stale export. The text encoder stays in PyTorch:
it runs once per note, the U-Net once per sliding window.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)
Forward = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
BACKENDS = ("tensorrt", "onnxruntime", "torch")


def cache_dir() -> Path:
    """Where exported engines live: $ONCOPLAN_CACHE, else ~/.cache/oncoplan (bundles may be read-only)."""
    return Path(os.environ.get("ONCOPLAN_CACHE") or Path.home() / ".cache" / "oncoplan") / "engines"


def _fingerprint(module: torch.nn.Module, shapes: Sequence[Sequence[int]]) -> str:
    h = hashlib.sha256(repr([tuple(s) for s in shapes]).encode())
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class OrtUNet:
    """A U-Net `forward(image, context)` through an ONNX Runtime session."""

    def __init__(self, onnx_path: Path, text_guided: bool) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.text_guided = text_guided
        self.provider = self.session.get_providers()[0]

    def __call__(self, image: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        feeds = {"image": image.detach().cpu().float().numpy()}
        if self.text_guided:
            if context is None:
                raise ValueError("this network is text-guided: a context is required")
            ctx = context.detach().cpu().float().numpy()
            feeds["context"] = np.broadcast_to(ctx, (image.shape[0], *ctx.shape[1:])).copy()
        (out,) = self.session.run(["logits"], feeds)
        return torch.from_numpy(out).to(image.device)


def export_onnx(unet: torch.nn.Module, roi_size: Sequence[int], text_dim: int | None, cache_dir: Path) -> Path:
    """The U-Net as ONNX (batch dimension dynamic), cached by network and shape fingerprint."""
    image = torch.zeros(1, 1, *roi_size)
    args: tuple = (image,) if text_dim is None else (image, torch.zeros(1, 2, text_dim))
    path = Path(cache_dir) / f"unet_{_fingerprint(unet, [a.shape for a in args])}.onnx"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.partial")  # concurrent exporters never share a file
    names = ["image"] + ([] if text_dim is None else ["context"])
    axes = {n: {0: "batch"} for n in [*names, "logits"]}
    if text_dim is not None:
        axes["context"][1] = "tokens"  # one per prompt: the count is the text encoder's choice
    with torch.no_grad():
        torch.onnx.export(
            unet.eval(), args, str(tmp), input_names=names, output_names=["logits"], dynamic_axes=axes,
            opset_version=17, dynamo=False,
        )  # fmt: skip
    tmp.replace(path)
    return path


def select_backend(
    unet: torch.nn.Module,
    roi_size: Sequence[int],
    cache_dir: Path,
    prefer: Sequence[str] = BACKENDS,
) -> tuple[Forward, str]:
    """(forward, backend name) for the first backend in `prefer` that works here."""
    text_dim = getattr(unet, "text_dim", None)
    for name in prefer:
        if name == "tensorrt":
            if not torch.cuda.is_available():
                log.info("TensorRT skipped: no CUDA device")
                continue
            try:
                from monai.networks import trt_compile

                compiled = trt_compile(unet, str(Path(cache_dir) / "unet_trt.plan"), args={"precision": "fp16"})
                return compiled, "tensorrt"
            except Exception as exc:  # no tensorrt wheel, unsupported op, ...: fall through, logged
                log.warning("TensorRT unavailable (%s); trying the next backend", exc)
        elif name == "onnxruntime":
            try:
                runner = OrtUNet(export_onnx(unet, roi_size, text_dim, cache_dir), text_dim is not None)
                return runner, f"onnxruntime ({runner.provider})"
            except Exception as exc:
                log.warning("ONNX Runtime unavailable (%s); trying the next backend", exc)
        elif name == "torch":
            return unet, "torch (eager)"
        else:
            raise ValueError(f"unknown backend {name!r}; choose from {BACKENDS}")
    raise RuntimeError(f"none of the backends {list(prefer)} works on this machine")
