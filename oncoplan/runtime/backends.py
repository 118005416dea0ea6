"""Runs a bundle's network on the fastest backend this machine has, and says which.

Order: TensorRT (MONAI `trt_compile`, when CUDA and TensorRT are present); otherwise OpenVINO
(CPU), ONNX Runtime (CPU, or CUDA if its provider is installed) or eager PyTorch, whichever runs the
network fastest on this machine, timed on a few calls at start-up. What an export needs to know of a
network's forward (its tensor inputs by name, which axes vary) is a :class:`Signature`; one
exists per network family here (segmentation U-Nets, the TACE dynamics UNet). Exports and
engines are cached under a name that hashes the weights and the input shapes, so a changed
checkpoint never reuses a stale file and two networks never share one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oncoplan.errors import InputError

log = logging.getLogger(__name__)
Forward = Callable[..., torch.Tensor]
BACKENDS = ("tensorrt", "openvino", "onnxruntime", "torch")
BACKENDS_ENV = "ONCOPLAN_BACKENDS"
STATIC_SHAPES_MAX = 4  # shapes OpenVINO compiles static per network (Signature.static_shapes)


def app_backends() -> tuple[str, ...]:
    """The backends the apps consider: `BACKENDS`, or those named in $ONCOPLAN_BACKENDS (comma
    separated, e.g. ``torch`` to keep a site on eager PyTorch, ``openvino`` to run one runtime)."""
    named = tuple(n.strip() for n in os.environ.get(BACKENDS_ENV, "").split(",") if n.strip())
    unknown = [n for n in named if n not in BACKENDS]
    if unknown:
        raise InputError(f"{BACKENDS_ENV}: unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    return named or BACKENDS


@dataclass(frozen=True)
class Signature:
    """A network's tensor inputs in call order, with one example each (batch first).

    `dynamic`: ONNX dynamic axes per input (every input's axis 0 is the batch). `broadcast`: inputs
    a caller gives once for the whole batch (batch 1: a note's context, a diffusion timestep);
    exported runtimes get them repeated to the batch of the first input. `max_batch`: the largest
    batch a TensorRT profile must accept. `static_shapes`: OpenVINO compiles the network once per
    input shape met (up to `STATIC_SHAPES_MAX`), for a network called thousands of times at a few
    shapes, where a static-shape compile runs each call faster than the dynamic one does.
    """

    names: tuple[str, ...]
    examples: tuple[torch.Tensor, ...]
    dynamic: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    broadcast: tuple[str, ...] = ()
    max_batch: int = 64
    static_shapes: bool = False

    def axes(self) -> dict[str, dict[int, str]]:
        axes = {n: {0: "batch", **dict(self.dynamic.get(n, {}))} for n in self.names}
        return {**axes, "out": {0: "batch"}}


def unet_signature(roi_size: Sequence[int], text_dim: int | None = None) -> Signature:
    """A segmentation U-Net `forward(image[, context])` on sliding windows of `roi_size`."""
    image = torch.zeros(2, 1, *roi_size)
    if text_dim is None:
        return Signature(("image",), (image,))
    # One context token per prompt: the count is the text encoder's choice, so it varies too.
    context = torch.zeros(2, 2, text_dim)
    return Signature(("image", "context"), (image, context), {"context": {1: "tokens"}}, ("context",))


def dynamics_signature(in_channels: int, patch: Sequence[int], max_batch: int = 128) -> Signature:
    """The TACE dynamics UNet `forward(x, timesteps)`: noisy patch + concatenated conditions, one step.
    Static shapes: a plan calls it thousands of times on micro-batches of one size (OpenVINO, 2 cores:
    88 vs 101 ms a call at batch 2, 32^3)."""
    x = torch.zeros(2, in_channels, *patch)
    return Signature(
        ("x", "timesteps"), (x, torch.zeros(2)), broadcast=("timesteps",), max_batch=max_batch, static_shapes=True
    )


def cache_dir() -> Path:
    """Where exported engines live: $ONCOPLAN_CACHE, else ~/.cache/oncoplan (bundles may be read-only)."""
    return Path(os.environ.get("ONCOPLAN_CACHE") or Path.home() / ".cache" / "oncoplan") / "engines"


def _fingerprint(module: torch.nn.Module, shapes: Sequence[Sequence[int]]) -> str:
    h = hashlib.sha256(repr([tuple(s) for s in shapes]).encode())
    h.update(type(module).__qualname__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _bind(names: Sequence[str], args: tuple, kwargs: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The call's tensors by input name; None keywords (e.g. the diffusion inferer's context=None) dropped."""
    given = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if value is None:
            continue
        if key not in names:
            raise TypeError(f"unexpected input {key!r}; the exported network takes {list(names)}")
        given[key] = value
    missing = [n for n in names if n not in given]
    if missing:
        raise TypeError(f"missing input(s) {missing}")
    return given


def _feeds(
    signature: Signature, args: tuple, kwargs: Mapping[str, object]
) -> tuple[dict[str, np.ndarray], torch.device]:
    """The call's inputs as float32 arrays by name, broadcast inputs repeated to the batch; and the
    device the result goes back to."""
    given = _bind(signature.names, args, kwargs)
    first = given[signature.names[0]]
    feeds = {}
    for name in signature.names:
        array = torch.as_tensor(given[name]).detach().cpu().float().numpy()
        if name in signature.broadcast:
            array = np.broadcast_to(array, (first.shape[0], *array.shape[1:])).copy()
        feeds[name] = array
    return feeds, first.device


class OrtModule:
    """A network's forward through an ONNX Runtime session; called like the PyTorch module."""

    def __init__(self, onnx_path: Path, signature: Signature) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.signature = signature
        self.provider = self.session.get_providers()[0]

    def __call__(self, *args: torch.Tensor, **kwargs: torch.Tensor | None) -> torch.Tensor:
        feeds, device = _feeds(self.signature, args, kwargs)
        (out,) = self.session.run(["out"], feeds)
        return torch.from_numpy(out).to(device)


class OpenVinoModule:
    """A network's forward through OpenVINO on the CPU, from the same ONNX export; called like the
    PyTorch module. OpenVINO keeps oneDNN's blocked layouts from one convolution to the next and fuses
    bias, norm and activation into them, where eager PyTorch reorders around every 3-D convolution
    and ONNX Runtime's CPU convolution is im2col + GEMM. Latency hint (one call uses every core),
    float32 throughout (no bf16/fp16 down-conversion, so the result stays at parity)."""

    def __init__(self, onnx_path: Path, signature: Signature) -> None:
        import openvino as ov

        self._core = ov.Core()
        # CACHE_DIR: the compiled network is kept beside the export, so a later start loads it
        # (CTV U-Net: 0.3 s instead of 1 s); OpenVINO recompiles if a cached blob does not load.
        self._config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
            "CACHE_DIR": str(Path(onnx_path).parent / "openvino"),
        }
        self._model = self._core.read_model(str(onnx_path))
        self.signature = signature
        # One request per compiled shape serves one call at a time, and one call already uses every
        # core: calls from several threads take turns. (Not a request per thread in a threading.local:
        # Holoscan runs each compute() on a fresh Python thread state and deletes it after, and an
        # OpenVINO object released inside that deletion crashes the interpreter.)
        self._compiled: dict[tuple | None, tuple] = {}  # input shapes (None: dynamic) -> (output, request)
        self._turn = threading.Lock()
        feeds, _ = _feeds(signature, signature.examples, {})
        self._request(feeds)  # compiled now, not on the first call

    def _request(self, feeds: Mapping[str, np.ndarray]) -> tuple:
        """The (output, infer request) for these inputs' shapes, compiled on first need."""
        key = tuple((name, a.shape) for name, a in feeds.items()) if self.signature.static_shapes else None
        if key not in self._compiled and sum(k is not None for k in self._compiled) >= STATIC_SHAPES_MAX:
            key = None  # every further shape shares the dynamic-shape network
        if key not in self._compiled:
            model = self._model
            if key is not None:
                model = model.clone()
                model.reshape({name: list(shape) for name, shape in key})
            compiled = self._core.compile_model(model, "CPU", self._config)
            self._compiled[key] = (compiled.output(0), compiled.create_infer_request())
        return self._compiled[key]

    @property
    def compiled_shapes(self) -> list[tuple | None]:
        """The input shapes compiled so far, ((name, shape), ...) each; None for the dynamic-shape one."""
        return list(self._compiled)

    def __call__(self, *args: torch.Tensor, **kwargs: torch.Tensor | None) -> torch.Tensor:
        feeds, device = _feeds(self.signature, args, kwargs)
        with self._turn:
            output, request = self._request(feeds)
            out = np.array(request.infer(feeds)[output], copy=True)  # the request reuses its buffer
        return torch.from_numpy(out).to(device)


def _key(module: torch.nn.Module, signature: Signature) -> str:
    """The cache key of `module` under `signature`: its weights and the example shapes."""
    return _fingerprint(module, [e.shape for e in signature.examples])


def export_onnx(
    module: torch.nn.Module, signature: Signature, cache_dir: Path, prefix: str = "net", key: str | None = None
) -> Path:
    """`module` as ONNX (batch and the signature's other axes dynamic), cached by weights and shapes
    (`key`, computed if not given)."""
    examples = tuple(e.to(_device(module)) for e in signature.examples)
    path = Path(cache_dir) / f"{prefix}_{key or _key(module, signature)}.onnx"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.partial")  # concurrent exporters never share a file
    with torch.no_grad():
        torch.onnx.export(
            module.eval(), examples, str(tmp), input_names=list(signature.names), output_names=["out"],
            dynamic_axes=signature.axes(), opset_version=17, dynamo=False,
        )  # fmt: skip
    tmp.replace(path)
    return path


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters(), torch.zeros(0)).device


def _tensorrt(
    module: torch.nn.Module,
    signature: Signature,
    cache_dir: Path,
    prefix: str,
    key: str,
    bundle_args: Mapping[str, Any] | None = None,
) -> torch.nn.Module | None:
    """`module` with MONAI's TensorRT hook (engine built on first call, cached), or None if it cannot be.
    `bundle_args`: the bundle's own `trt_args` (inference_trt.json: precision, batch profile), which
    override the defaults derived from the signature."""
    from monai.networks import trt_compile

    base = Path(cache_dir) / f"{prefix}_{key}_trt"
    base.parent.mkdir(parents=True, exist_ok=True)
    args = {
        "precision": "fp16",
        "input_names": list(signature.names),
        "dynamic_batchsize": [1, int(signature.examples[0].shape[0]), signature.max_batch],
        **dict(bundle_args or {}),
        "fallback": True,  # a shape outside the profile runs eager instead of failing the study
    }
    compiled = trt_compile(module, str(base), args=args)
    # trt_compile returns the module untouched (with a warning) when tensorrt/polygraphy are missing.
    return compiled if hasattr(compiled, "_trt_compiler") else None


def _race_inputs(signature: Signature, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The signature's examples with a seeded random first input: an all-zero image through instance
    norm says little about whether two runtimes agree."""
    first = torch.rand(signature.examples[0].shape, generator=torch.Generator().manual_seed(0))
    return tuple(e.to(device) for e in (first, *signature.examples[1:]))


def _median_call(forward: Forward, inputs: tuple[torch.Tensor, ...], repeats: int = 3) -> tuple[float, torch.Tensor]:
    """(median seconds of `forward` on `inputs` after one warm-up call, the warm-up's output)."""
    seconds, out = [], None
    with torch.no_grad():
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            result = forward(*inputs)
            if inputs[0].device.type == "cuda":
                torch.cuda.synchronize(inputs[0].device)
            if i:
                seconds.append(time.perf_counter() - t0)
            else:
                out = result
    return float(np.median(seconds)), out


# A racer whose output strays further from eager than this (relative to the output's scale) is out:
# the parity tests hold the exported runtimes to 1e-4 on probabilities; this catches a broken runtime
# (an op lowered wrongly by a new release) without tripping on float32 summation order.
RACE_TOLERANCE = 1e-3


def _agrees(out: torch.Tensor, reference: torch.Tensor) -> bool:
    scale = max(1.0, float(reference.abs().max()))
    return (
        out.shape == reference.shape and float((out.float() - reference.float()).abs().max()) <= RACE_TOLERANCE * scale
    )


def select_backend(
    module: torch.nn.Module,
    signature: Signature,
    cache_dir: Path,
    prefer: Sequence[str] = BACKENDS,
    prefix: str = "net",
    race: bool = True,
    trt_args: Mapping[str, Any] | None = None,
) -> tuple[Forward, str]:
    """(forward, backend name): TensorRT if it is in `prefer` and works here; otherwise, with `race`,
    the fastest of OpenVINO, ONNX Runtime and eager PyTorch timed on the signature's shapes, among
    those whose output agrees with eager's (which one wins depends on the network and the CPU), else
    the first of `prefer` that works. The race's winner is kept in `cache_dir` per weights, shapes
    and machine, so later runs start without timing."""
    key = _key(module, signature)  # hashes every weight: once per selection
    record = _race_record(key, cache_dir, prefix, prefer) if race else None
    if record is not None and record.exists():
        # Decided before on this machine for these weights: skip the timing (it costs start-up).
        winner = json.loads(record.read_text())["winner"]
        log.debug("%s: %s (timed earlier, %s)", prefix, winner, record.name)
        prefer, race = [p for p in prefer if p in ("tensorrt", winner)], False
    working: list[tuple[Forward, str]] = []
    for name in prefer:
        if name == "tensorrt":
            if not torch.cuda.is_available() or _device(module).type != "cuda":
                log.debug("TensorRT skipped for %s: no CUDA device", prefix)
                continue
            try:
                compiled = _tensorrt(module, signature, cache_dir, prefix, key, trt_args)
            except Exception as exc:  # unsupported op, bad install, ...: fall through, logged
                log.warning("TensorRT failed for %s (%s); trying the next backend", prefix, exc)
                continue
            if compiled is not None:
                return compiled, "tensorrt"
            log.warning("TensorRT unavailable for %s (tensorrt/polygraphy not installed)", prefix)
        elif name == "onnxruntime":
            try:
                runner = OrtModule(export_onnx(module, signature, cache_dir, prefix, key), signature)
                working.append((runner, f"onnxruntime ({runner.provider})"))
            except Exception as exc:
                log.warning("ONNX Runtime unavailable for %s (%s); trying the next backend", prefix, exc)
        elif name == "openvino":
            if _device(module).type == "cuda":
                log.debug("OpenVINO skipped for %s: the network is on CUDA and OpenVINO runs here on the CPU", prefix)
                continue
            try:
                runner = OpenVinoModule(export_onnx(module, signature, cache_dir, prefix, key), signature)
                working.append((runner, "openvino (CPU)"))
            except Exception as exc:
                log.warning("OpenVINO unavailable for %s (%s); trying the next backend", prefix, exc)
        elif name == "torch":
            working.append((module, "torch (eager)"))
        else:
            raise ValueError(f"unknown backend {name!r}; choose from {BACKENDS}")
        if working and not race:
            return working[0]
    if not working:
        raise RuntimeError(f"none of the backends {list(prefer)} works on this machine")
    if len(working) == 1:
        return working[0]
    inputs = _race_inputs(signature, _device(module))
    with torch.no_grad():
        reference = module(*inputs)
    timed = []
    for forward, name in working:
        seconds, out = _median_call(forward, inputs)
        if _agrees(out, reference):
            timed.append((seconds, forward, name))
        else:
            log.warning(
                "%s: %s left out, its output differs from eager PyTorch's beyond %g", prefix, name, RACE_TOLERANCE
            )
    if not timed:  # every racer strayed: the module itself is always right
        return module, "torch (eager)"
    _, forward, name = min(timed, key=lambda t: t[0])
    log.info("%s: %s", prefix, ", ".join(f"{n} {t * 1e3:.1f} ms" for t, _, n in timed) + f" per call -> {name}")
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(f".{os.getpid()}.partial")
        tmp.write_text(json.dumps({"winner": name.split()[0], "ms": {n: t * 1e3 for t, _, n in timed}}))
        tmp.replace(record)
    return forward, name


def _race_record(key: str, cache_dir: Path, prefix: str, prefer: Sequence[str]) -> Path:
    """Where the race's winner is kept: per weights and shapes (`key`), candidates, machine and the
    versions of what raced (a new runtime or a new way of compiling can change the winner)."""
    machine = f"{platform.platform()}|{_cpu_name()}|{torch.get_num_threads()}|{list(prefer)}|{_versions()}"
    return Path(cache_dir) / f"{prefix}_{key}_{hashlib.sha256(machine.encode()).hexdigest()[:8]}.race.json"


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "-"

    return ",".join(f"{name} {of(name)}" for name in ("oncoplan", "torch", "openvino", "onnxruntime"))


def _cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo; elsewhere what `platform` knows): two CPUs may rank backends apart."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((ln for ln in lines if ln.startswith("model name")), platform.processor())
