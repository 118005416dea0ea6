"""Accelerated backends: ONNX Runtime and OpenVINO match eager PyTorch (segmentation U-Nets, the TACE dynamics
UNet, the whole world model); fallback order; cached exports."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

from oncoplan.ctv.network import ContextUNet
from oncoplan.runtime.backends import dynamics_signature, export_onnx, select_backend, unet_signature

EXPORTED = ("onnxruntime", "openvino")  # the runtimes that run the ONNX export


def _parity(
    unet: torch.nn.Module, tmp_path: Path, context: torch.Tensor | None, backend: str, roi=(32, 32, 16)
) -> None:
    torch.manual_seed(0)
    unet.eval()
    image = torch.rand(3, 1, *roi)  # a batch other than the export's
    signature = unet_signature(roi, getattr(unet, "text_dim", None))
    forward, name = select_backend(unet, signature, tmp_path, prefer=(backend,))
    assert name.startswith(backend)
    with torch.no_grad():
        eager = torch.softmax(unet(image) if context is None else unet(image, context), dim=1)
    ort = torch.softmax(forward(image) if context is None else forward(image, context), dim=1)
    assert float((eager - ort).abs().max()) <= 1e-4
    agree = (eager.argmax(1) == ort.argmax(1)).float().mean()
    assert float(agree) >= 0.9999


@pytest.mark.parametrize("backend", EXPORTED)
def test_exported_matches_eager_text_guided(tmp_path: Path, backend: str) -> None:
    torch.manual_seed(1)
    unet = ContextUNet(channels=(8, 16, 16, 32, 32), text_dim=24)
    _parity(unet, tmp_path, torch.randn(1, 3, 24), backend)  # token count other than the export's


@pytest.mark.parametrize("backend", EXPORTED)
def test_exported_matches_eager_vision_only(tmp_path: Path, backend: str) -> None:
    torch.manual_seed(2)
    _parity(ContextUNet(channels=(8, 16, 16, 32, 32), text_dim=None), tmp_path, None, backend)


@pytest.mark.parametrize("backend", EXPORTED)
def test_exported_matches_eager_tace_assistant(tmp_path: Path, backend: str) -> None:
    """The TACE assistant's DynUNet (instance norm, residual blocks) as the planner runs it."""
    from oncoplan.runtime.bundles import bundle_parser

    from .helpers import TINY_TACE

    bundle = Path(__file__).resolve().parents[1] / "bundles" / "tace_assistant"
    overrides = {"device": "$torch.device('cpu')", **TINY_TACE["tace_assistant"]}
    torch.manual_seed(3)
    unet = bundle_parser(bundle, overrides=overrides).get_parsed_content("network")
    _parity(unet, tmp_path, None, backend, roi=tuple(TINY_TACE["tace_assistant"]["roi_size"]))


def test_export_is_cached_per_weights(tmp_path: Path) -> None:
    unet = ContextUNet(channels=(4, 8, 8, 16, 16), text_dim=None)
    signature = unet_signature((32, 32, 16))
    first = export_onnx(unet, signature, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert export_onnx(unet, signature, tmp_path).stat().st_mtime_ns == stamp
    assert export_onnx(unet, unet_signature((32, 32, 32)), tmp_path) != first  # another shape, another file
    with torch.no_grad():
        next(unet.parameters()).add_(1.0)
    assert export_onnx(unet, signature, tmp_path) != first


def test_fallback_reaches_eager_and_logs_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="oncoplan.runtime.backends")
    unet = ContextUNet(channels=(4, 8, 8, 16, 16), text_dim=None)
    forward, name = select_backend(unet, unet_signature((32, 32, 16)), tmp_path, prefer=("tensorrt", "torch"))
    assert name == "torch (eager)" and forward is unet
    if not torch.cuda.is_available():
        assert "TensorRT skipped" in caplog.text or "TensorRT unavailable" in caplog.text


def _tiny(name: str, seed: int) -> torch.nn.Module:
    """A bundle's network at the test sizes, random weights (perturbed: MONAI zero-initialises some outputs)."""
    from oncoplan.runtime.bundles import bundle_parser

    from .helpers import TINY_TACE

    bundle = Path(__file__).resolve().parents[1] / "bundles" / name
    torch.manual_seed(seed)
    net = bundle_parser(bundle, overrides={"device": "$torch.device('cpu')", **TINY_TACE[name]}).get_parsed_content(
        "network"
    )
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


@pytest.mark.parametrize("backend", EXPORTED)
def test_exported_matches_eager_tace_dynamics(tmp_path: Path, backend: str) -> None:
    """One denoising step of the dynamics UNet as the DDIM sampler calls it: x batch 5, one timestep,
    context=None; every sample of every protocol rides on the result, so parity is on the noise."""
    from oncoplan.tace.dynamics import condition

    net = _tiny("tace_dynamics", 4)
    patch = (16, 16, 16)  # TINY_TACE's dynamics roi_size
    forward, name = select_backend(net, dynamics_signature(net.input_channels, patch), tmp_path, (backend,))
    assert name.startswith(backend)
    torch.manual_seed(5)
    layout = (torch.rand(5, 3, *patch) > 0.7).float()
    cond = condition(torch.rand(5, 1, *patch), torch.rand(5, 1, *patch) > 0.5, layout)
    x = torch.cat([torch.randn(5, 1, *patch), cond], 1)
    t = torch.Tensor((437,))
    with torch.no_grad():
        eager = net(x, timesteps=t, context=None)
    out = forward(x, timesteps=t, context=None)
    assert eager.shape == out.shape == (5, 1, *patch)
    assert float((eager - out).abs().max()) <= 1e-4 * max(1.0, float(eager.abs().max()))


def test_openvino_compiles_the_dynamics_unet_per_shape_up_to_its_bound(tmp_path: Path) -> None:
    """The dynamics UNet's signature asks for static shapes: each batch size met is compiled as its own
    static network, up to STATIC_SHAPES_MAX; every further size shares one dynamic-shape network. All at
    parity with eager."""
    from oncoplan.runtime.backends import STATIC_SHAPES_MAX, OpenVinoModule

    net = _tiny("tace_dynamics", 6)
    patch = (16, 16, 16)
    forward, _ = select_backend(net, dynamics_signature(net.input_channels, patch), tmp_path, ("openvino",))
    assert isinstance(forward, OpenVinoModule)
    batches = (2, 3, 1, 2, 4, 5, 6)
    t = torch.Tensor((300,))
    for b in batches:
        x = torch.randn(b, net.input_channels, *patch)
        with torch.no_grad():
            eager = net(x, timesteps=t, context=None)
        out = forward(x, timesteps=t, context=None)
        assert out.shape == eager.shape
        assert float((eager - out).abs().max()) <= 1e-4 * max(1.0, float(eager.abs().max())), b
    static = [dict(k)["x"][0] for k in forward.compiled_shapes if k is not None]
    assert STATIC_SHAPES_MAX == 4 and static == [2, 3, 1, 4]
    assert forward.compiled_shapes[-1] is None  # 5 and 6 ran on the dynamic-shape network


def test_race_keeps_the_fastest_backend_and_logs_each(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="oncoplan.runtime.backends")
    unet = ContextUNet(channels=(4, 8, 8, 16, 16), text_dim=None).eval()
    signature = unet_signature((32, 32, 16))
    racers = ("openvino", "onnxruntime", "torch")
    forward, name = select_backend(unet, signature, tmp_path, prefer=racers, prefix="tiny")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("tiny:"))
    timings = dict(re.findall(r"(openvino \(CPU\)|onnxruntime \(\w+\)|torch \(eager\)) ([0-9.]+) ms", line))
    assert set(timings) == {"openvino (CPU)", "onnxruntime (CPUExecutionProvider)", "torch (eager)"}, line
    # the fastest: its logged time is the least (two racers may tie at the log's 0.1 ms rounding)
    assert float(timings[name]) == min(float(t) for t in timings.values()) and line.endswith(f"-> {name}")
    assert (forward is unet) == (name == "torch (eager)")
    caplog.clear()  # the next start on this machine reuses the decision without timing
    _, again_name = select_backend(unet, signature, tmp_path, prefer=racers, prefix="tiny")
    assert again_name == name and "timed earlier" in caplog.text and " ms" not in caplog.text
    caplog.clear()  # another version of a runtime (or of OncoPlan) races again
    from oncoplan.runtime import backends as inference_backend

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inference_backend, "_versions", lambda: "openvino 2099.1")
        select_backend(unet, signature, tmp_path, prefer=racers, prefix="tiny")
    assert "timed earlier" not in caplog.text and " ms" in caplog.text
    first, first_name = select_backend(unet, signature, tmp_path, prefer=("torch", "onnxruntime"), race=False)
    assert first is unet and first_name == "torch (eager)"


def test_race_leaves_out_a_backend_whose_output_differs_from_eager(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runtime release that lowers an op wrongly is fast and wrong: it must not win."""
    from oncoplan.runtime import backends as inference_backend

    right = inference_backend.OpenVinoModule.__call__
    monkeypatch.setattr(inference_backend.OpenVinoModule, "__call__", lambda self, *a, **k: right(self, *a, **k) + 0.01)
    caplog.set_level(logging.DEBUG, logger="oncoplan.runtime.backends")
    unet = ContextUNet(channels=(4, 8, 8, 16, 16), text_dim=None).eval()
    forward, name = select_backend(unet, unet_signature((32, 32, 16)), tmp_path, ("openvino", "torch"), "tiny")
    assert (forward, name) == (unet, "torch (eager)")
    assert "openvino (CPU) left out, its output differs from eager PyTorch's" in caplog.text


def test_the_tensorrt_path_takes_each_bundles_own_trt_args(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The apps build TensorRT engines with the arguments the bundle declares in inference_trt.json (as
    `monai.bundle run` with that config does), not with a copy in code. TensorRT itself needs a GPU: here
    MONAI's trt_compile is replaced by a recorder of the arguments it is given."""
    import monai.networks

    from oncoplan.runtime.backends import _tensorrt
    from oncoplan.runtime.bundles import shipped_bundles, trt_args
    from oncoplan.tace.world_model import WorldModel

    seen: dict = {}
    monkeypatch.setattr(monai.networks, "trt_compile", lambda module, path, args: seen.update(args) or module)
    declared = trt_args(shipped_bundles() / "tace_survival")
    assert declared == {"precision": "fp16", "dynamic_batchsize": [1, 20, 40]}
    _tensorrt(torch.nn.Conv3d(1, 1, 1), unet_signature((8, 8, 8)), tmp_path, "x", "key", declared)
    assert seen["dynamic_batchsize"] == [1, 20, 40] and seen["precision"] == "fp16" and seen["fallback"] is True
    world = WorldModel.from_bundles(shipped_bundles() / "tace_dynamics", shipped_bundles() / "tace_assistant", 1, 1)
    assert world.trt_args == {
        "dynamics": trt_args(shipped_bundles() / "tace_dynamics"),
        "assistant": trt_args(shipped_bundles() / "tace_assistant"),
    }
