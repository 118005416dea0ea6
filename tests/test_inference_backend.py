"""Accelerated backends: ONNX Runtime matches eager PyTorch; fallback order; cached exports."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from oncoplan.operators.inference_backend import export_onnx, select_backend
from oncoplan.training.ctv.network import ContextUNet


def _parity(unet: torch.nn.Module, tmp_path: Path, context: torch.Tensor | None, roi=(32, 32, 16)) -> None:
    torch.manual_seed(0)
    unet.eval()
    image = torch.rand(2, 1, *roi)
    forward, name = select_backend(unet, roi, tmp_path, prefer=("onnxruntime", "torch"))
    assert name.startswith("onnxruntime")
    with torch.no_grad():
        eager = torch.softmax(unet(image) if context is None else unet(image, context), dim=1)
    ort = torch.softmax(forward(image) if context is None else forward(image, context), dim=1)
    assert float((eager - ort).abs().max()) <= 1e-4
    agree = (eager.argmax(1) == ort.argmax(1)).float().mean()
    assert float(agree) >= 0.9999


def test_onnxruntime_matches_eager_text_guided(tmp_path: Path) -> None:
    torch.manual_seed(1)
    unet = ContextUNet(channels=(8, 16, 16, 32, 32), text_dim=24)
    _parity(unet, tmp_path, torch.randn(1, 3, 24))  # token count other than the export's


def test_onnxruntime_matches_eager_vision_only(tmp_path: Path) -> None:
    torch.manual_seed(2)
    _parity(ContextUNet(channels=(8, 16, 16, 32, 32), text_dim=None), tmp_path, None)


def test_onnxruntime_matches_eager_tace_assistant(tmp_path: Path) -> None:
    """The TACE assistant's DynUNet (instance norm, residual blocks) as the planner runs it."""
    from oncoplan.training.bundle_loading import bundle_parser

    from .helpers import TINY_TACE

    bundle = Path(__file__).resolve().parents[1] / "bundles" / "tace_assistant"
    overrides = {"device": "$torch.device('cpu')", **TINY_TACE["tace_assistant"]}
    torch.manual_seed(3)
    unet = bundle_parser(bundle, overrides=overrides).get_parsed_content("network")
    _parity(unet, tmp_path, None, roi=tuple(TINY_TACE["tace_assistant"]["roi_size"]))


def test_export_is_cached_per_weights(tmp_path: Path) -> None:
    unet = ContextUNet(channels=(4, 8, 8, 16, 16), text_dim=None)
    first = export_onnx(unet, (32, 32, 16), None, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert export_onnx(unet, (32, 32, 16), None, tmp_path).stat().st_mtime_ns == stamp
    with torch.no_grad():
        next(unet.parameters()).add_(1.0)
    assert export_onnx(unet, (32, 32, 16), None, tmp_path) != first


def test_fallback_reaches_eager_and_logs_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="oncoplan.operators.inference_backend")
    unet = ContextUNet(channels=(4, 8, 8, 16, 16), text_dim=None)
    forward, name = select_backend(unet, (32, 32, 16), tmp_path, prefer=("tensorrt", "torch"))
    assert name == "torch (eager)" and forward is unet
    if not torch.cuda.is_available():
        assert "TensorRT skipped" in caplog.text or "TensorRT unavailable" in caplog.text
