"""`oncoplan package ctv|tace|listener --out DIR`: a MONAI Application Package (MAP), built offline.

The layout and manifests follow the MAP specification as the SDK's packager (holoscan-cli)
writes them: the app under /opt/holoscan/app, models under /opt/holoscan/models/<name>,
/etc/holoscan/app.json (how to run it) and pkg.json (what it needs), and the HOLOSCAN_*
variables that point the app at its input, output and models. The image runs as a non-root user.

Offline, in three layers that nothing outside the build host feeds:
1. a base image with Python 3.11: made from Debian's packages (`mmdebstrap --variant=minbase`,
   imported into the engine as `oncoplan-base:bookworm`), or any base the user names (`--base`);
2. the runtime (`oncoplan-runtime:<digest>`): a virtual environment installed with
   `pip install --no-index --find-links` from a wheelhouse gathered on the build host (every wheel
   the apps need: the CPU build of torch, or the CUDA one with `--gpu`). Both MAPs and the listener
   image are built FROM this one image, so the engine stores its ~2.5 GB once;
3. the app: the oncoplan wheel, the app folder, its bundles and the manifests (tens of MB).

A hospital without internet builds the same way from a wheelhouse it brought (`--wheelhouse DIR`)
and a base it has. The context written to --out holds all of it (runtime/ with the wheels,
hard-linked where it can be) and `build.sh`, which builds it with podman or docker.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tomllib

from oncoplan import __version__
from oncoplan.errors import InputError
from oncoplan.fsio import atomic_output_dir
from oncoplan.runtime.bundles import CTV_BUNDLE, TACE_BUNDLES

REPO = Path(__file__).resolve().parents[1]
APP_ROOT, MODEL_ROOT, WORKDIR = "/opt/holoscan/app", "/opt/holoscan/models", "/var/holoscan"
USER_ID = 1000  # the non-root user the images run as ("holoscan")
TORCH = "torch==2.13.0"  # the CPU wheel lies on the build host's disk; --gpu takes PyPI's CUDA build
BASE_SUITE = "bookworm"  # Python 3.11, as the wheels (cp311)
DEBIAN_BASE = f"oncoplan-base:{BASE_SUITE}"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
RUNTIME_REPO = "oncoplan-runtime"
# Holoscan (under the MONAI Deploy SDK) links libcudart.so.13 even on a CPU: build hosts with a CUDA toolkit
# hide that; an image has none, so the runtime carries NVIDIA's CUDA runtime wheel (NVIDIA's redistributable
# licence, not GPL) and registers its lib folder with the dynamic linker.
CUDA_RUNTIME = ("nvidia-cuda-runtime>=13,<14",)
ENGINE_ENV = "ONCOPLAN_ENGINE"  # podman | docker: which engine to use (default: the first that answers)
CACHE_ENV = "ONCOPLAN_CACHE"  # where wheelhouses are kept between builds (default ~/.cache/oncoplan)


@dataclass(frozen=True)
class AppSpec:
    name: str  # package name, e.g. "ctv"
    module: str  # python -m target
    app_dir: str  # folder under apps/
    bundles: tuple[str, ...]  # folders under bundles/
    title: str
    memory: str = "4Gi"  # what pkg.json asks of the platform


APPS = {
    "ctv": AppSpec(
        "ctv",
        "oncoplan.apps.ctv_contouring",
        "ctv_contouring",
        (CTV_BUNDLE,),
        "OncoPlan CTV contouring (research use only)",
    ),
    "tace": AppSpec(
        "tace",
        "oncoplan.apps.tace_planner",
        "tace_planner",
        tuple(TACE_BUNDLES.values()),
        "OncoPlan TACE world-model planning (research use only)",
        memory="8Gi",
    ),
}
IMAGES = (*APPS, "listener")  # what `oncoplan package` builds


def app_manifest(spec: AppSpec) -> dict:
    return {
        "apiVersion": "1.0.0",
        "command": json.dumps(["python3", "-u", "-m", spec.module]),
        "environment": {
            "HOLOSCAN_APPLICATION": APP_ROOT,
            "HOLOSCAN_INPUT_PATH": "input/",
            "HOLOSCAN_OUTPUT_PATH": "output/",
            "HOLOSCAN_WORKDIR": WORKDIR,
            "HOLOSCAN_MODEL_PATH": MODEL_ROOT,
            "HOLOSCAN_CONFIG_PATH": f"{APP_ROOT}/app.yaml",
            "HOLOSCAN_APP_MANIFEST_PATH": "/etc/holoscan/app.json",
            "HOLOSCAN_PKG_MANIFEST_PATH": "/etc/holoscan/pkg.json",
            "HOLOSCAN_DOCS_PATH": "/opt/holoscan/docs",
            "HOLOSCAN_LOGS_PATH": f"{WORKDIR}/logs",
        },
        "input": {"path": "input/", "formats": None},
        "output": {"path": "output/", "formats": None},
        "liveness": None,
        "readiness": None,
        "sdk": "monai-deploy",
        "sdkVersion": _sdk_version(),
        "timeout": 0,
        "version": __version__,
        "workingDirectory": WORKDIR,
    }


def package_manifest(spec: AppSpec) -> dict:
    return {
        "apiVersion": "1.0.0",
        "applicationRoot": APP_ROOT,
        "modelRoot": MODEL_ROOT,
        "models": {b: f"{MODEL_ROOT}/{b}" for b in spec.bundles},
        "resources": {"cpu": 2, "gpu": 0, "memory": spec.memory, "gpuMemory": "0Gi"},
        "platformConfig": "x64-workstation",
        "version": __version__,
    }


# The runtime: its build context is the wheelhouse folder, bind-mounted for the one RUN that installs
# from it, so no wheel is left in a layer.
RUNTIME_DOCKERFILE = f"""# OncoPlan runtime: Python 3.11 + every wheel the apps need, installed offline (wheelhouse).
ARG BASE={DEBIAN_BASE}
FROM ${{BASE}}
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LANG=C.UTF-8
RUN --mount=type=bind,target=/wheelhouse python3 -m venv /opt/venv \\
    && /opt/venv/bin/pip install --no-index --find-links /wheelhouse -r /wheelhouse/requirements.txt \
    && find /opt/venv -path "*/nvidia/*/lib" -type d > /etc/ld.so.conf.d/oncoplan-nvidia.conf && ldconfig
# The non-root user every OncoPlan image runs as (useradd where the base has it).
RUN if command -v useradd >/dev/null; then useradd --uid {USER_ID} --user-group --create-home holoscan; \\
    else echo "holoscan:x:{USER_ID}:{USER_ID}::/home/holoscan:/bin/sh" >> /etc/passwd \\
      && echo "holoscan:x:{USER_ID}:" >> /etc/group && mkdir -p /home/holoscan \\
      && chown {USER_ID}:{USER_ID} /home/holoscan; fi
"""


def dockerfile(spec: AppSpec, runtime: str) -> str:
    env = " \\\n    ".join(f'{k}="{v}"' for k, v in app_manifest(spec)["environment"].items())
    return f"""# MONAI Application Package: {spec.title}
# Built FROM the OncoPlan runtime (runtime/ in this folder; ./build.sh builds both, offline).
ARG RUNTIME={runtime}
FROM ${{RUNTIME}}
LABEL org.opencontainers.image.title="{spec.title}" org.opencontainers.image.version="{__version__}" \\
      org.opencontainers.image.licenses="Apache-2.0"
RUN --mount=type=bind,source=dist,target=/dist pip install --no-index --no-deps /dist/oncoplan-*.whl
COPY app {APP_ROOT}
COPY models {MODEL_ROOT}
COPY app.json pkg.json /etc/holoscan/
ENV {env} \
    ONCOPLAN_CACHE="{WORKDIR}/cache"
# {WORKDIR}/cache: the engines the app exports (ONNX, OpenVINO) on its first run; mount a volume there to
# keep them between runs (a fresh container otherwise exports and times the backends again).
RUN mkdir -p {WORKDIR}/input {WORKDIR}/output {WORKDIR}/logs {WORKDIR}/cache && chown -R {USER_ID}:{USER_ID} {WORKDIR}
USER {USER_ID}:{USER_ID}
WORKDIR {WORKDIR}
ENTRYPOINT ["python3", "-u", "-m", "{spec.module}"]
"""


def _sdk_version() -> str:
    from importlib.metadata import version

    return version("monai-deploy-app-sdk")


def _copy_bundle(src: Path, dst: Path) -> None:
    """configs, docs and weights; never training data, caches or evaluation output."""
    if not (src / "models").is_dir() or not any((src / "models").glob("*.pt")):
        raise InputError(f"{src}: the bundle has no weights under models/")
    for part in ("configs", "docs", "models"):
        if (src / part).exists():
            shutil.copytree(src / part, dst / part, ignore=shutil.ignore_patterns("__pycache__", "efficiency"))


def build_wheel(out: Path) -> Path:
    """The oncoplan wheel of this tree (no network: setuptools from the environment)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(out)]
    with tempfile.TemporaryDirectory() as cwd:  # setuptools' build/ stays out of the tree
        r = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd, timeout=600)
    if r.returncode != 0:
        raise InputError(f"could not build the oncoplan wheel: {r.stderr.strip()[-500:]}")
    (wheel,) = out.glob("oncoplan-*.whl")
    return wheel


def _link_tree(src: Path, dst: Path) -> None:
    """Hard links where the file system allows (a wheelhouse is GBs), copies otherwise."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        try:
            os.link(f, dst / f.name)
        except OSError:
            shutil.copy2(f, dst / f.name)


def write_context(
    name: str, out: Path, wheelhouse: Path | None = None, runtime: str = f"{RUNTIME_REPO}:latest"
) -> Path:
    """Write the build context for image `name` into `out` (which must not exist or be empty). With a
    wheelhouse, runtime/ holds it and its Dockerfile, so the folder builds on a machine with no network."""
    if name not in IMAGES:
        raise InputError(f"unknown app {name!r}; choose {', '.join(IMAGES)}")
    with atomic_output_dir(out) as tmp:
        build_wheel(tmp / "dist")
        if name == "listener":
            text = (REPO / "deploy" / "listener.Dockerfile").read_text()
            (tmp / "Dockerfile").write_text(
                text.replace(f"ARG RUNTIME={RUNTIME_REPO}:latest", f"ARG RUNTIME={runtime}")
            )
        else:
            spec = APPS[name]
            shutil.copytree(REPO / "apps" / spec.app_dir, tmp / "app", ignore=shutil.ignore_patterns("__pycache__"))
            for bundle in spec.bundles:
                _copy_bundle(REPO / "bundles" / bundle, tmp / "models" / bundle)
            (tmp / "app.json").write_text(json.dumps(app_manifest(spec), indent=2) + "\n")
            (tmp / "pkg.json").write_text(json.dumps(package_manifest(spec), indent=2) + "\n")
            (tmp / "Dockerfile").write_text(dockerfile(spec, runtime))
        (tmp / "requirements.txt").write_text((REPO / "constraints.txt").read_text())
        if wheelhouse is not None:
            (tmp / "runtime").mkdir()
            (tmp / "runtime" / "Dockerfile").write_text(RUNTIME_DOCKERFILE)
            _link_tree(wheelhouse, tmp / "runtime" / "wheels")
        (tmp / "build.sh").write_text(_build_script(name, runtime))
        (tmp / "build.sh").chmod(0o755)
    return Path(out)


def _build_script(name: str, runtime: str) -> str:
    return f"""#!/bin/sh
# Builds this image offline: the runtime from runtime/wheels (skipped when the engine has it), then the image.
#   ./build.sh [TAG] [BASE]    BASE: an image with Python 3.11 (default {DEBIAN_BASE}, which
#   `oncoplan package` makes with mmdebstrap; any Debian bookworm or python:3.11 image works)
set -eu
cd "$(dirname "$0")"
engine=${{{ENGINE_ENV}:-$(command -v podman >/dev/null && echo podman || echo docker)}}
if ! $engine image inspect {runtime} >/dev/null 2>&1; then
  $engine build --no-cache --network none --build-arg BASE="${{2:-{DEBIAN_BASE}}}" -t {runtime} \\
    -f runtime/Dockerfile runtime/wheels
fi
$engine build --no-cache --network none -t "${{1:-oncoplan-{name}:latest}}" .
"""


# ---------------------------------------------------------------- the wheelhouse


# Dependencies only training uses (oncoplan.training, never the apps or the listener), left out of the images:
# scikit-survival (and its solver ecos) are GPL-3.0, which images hospitals receive must not carry.
TRAINING_ONLY = ("scikit-survival",)


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def runtime_requirements(gpu: bool = False) -> list[str]:
    """What the runtime installs: torch (CPU or CUDA build) and oncoplan's dependencies but those only training
    uses (+ TensorRT on GPU)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"]["tensorrt"] if gpu else []
    deps = [d for d in project["dependencies"] if _name(d) not in TRAINING_ONLY]
    return [TORCH, *deps, *extra, *CUDA_RUNTIME]


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "oncoplan")


def gather_wheelhouse(gpu: bool = False, log: Callable[[str], None] = print) -> Path:
    """Every wheel the runtime needs, gathered once per (requirements, constraints, Python) into the cache
    (`pip wheel`: wheels from the indexes pip is set up with, the CPU torch from the host's disk, sdists built
    into wheels), with requirements.txt pinning each. Reused while those do not change."""
    reqs = runtime_requirements(gpu)
    constraints = (REPO / "constraints.txt").read_text()
    key = json.dumps([reqs, constraints, sys.version_info[:2], os.uname().machine])
    target = cache_dir() / f"wheelhouse-{'cuda' if gpu else 'cpu'}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (target / "requirements.txt").is_file():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    env = dict(os.environ)
    if gpu:  # PyPI's torch is the CUDA build; the host's CPU wheel (find-links, local indexes) must not win
        env["PIP_CONFIG_FILE"] = os.devnull
        env.pop("PIP_FIND_LINKS", None)
        env.pop("PIP_EXTRA_INDEX_URL", None)
    log(f"gathering the wheelhouse into {target} (once; pip wheel)")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(partial), "-c", str(REPO / "constraints.txt"), *reqs]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=3600)
    if r.returncode != 0:
        raise InputError(f"could not gather the wheelhouse: {r.stderr.strip()[-800:]}")
    _write_pins(partial)
    partial.rename(target)
    for old in cache_dir().glob(f"wheelhouse-{'cuda' if gpu else 'cpu'}-*"):  # earlier requirements' wheels
        if old != target and not old.name.endswith(".partial"):
            shutil.rmtree(old, ignore_errors=True)
    return target


def _write_pins(wheels: Path) -> None:
    pins = []
    for w in sorted(wheels.glob("*.whl")):
        dist, version = w.name.split("-")[:2]
        pins.append(f"{dist.replace('_', '-').lower()}=={version}")
    if not pins:
        raise InputError(f"{wheels}: no wheels")
    (wheels / "requirements.txt").write_text("\n".join(pins) + "\n")


def check_wheelhouse(wheels: Path) -> Path:
    """A wheelhouse the user brought: wheels and their requirements.txt (written here if missing)."""
    if not wheels.is_dir() or not any(wheels.glob("*.whl")):
        raise InputError(f"{wheels}: not a folder of wheels")
    if not (wheels / "requirements.txt").is_file():
        _write_pins(wheels)
    return wheels


# ---------------------------------------------------------------- the engine


def container_engine() -> str | None:
    """podman or docker, whichever answers `info` first ($ONCOPLAN_ENGINE names one); None if none does."""
    wanted = os.environ.get(ENGINE_ENV)
    for name in [wanted] if wanted else ["podman", "docker"]:
        if shutil.which(name) is None:
            continue
        try:
            if subprocess.run([name, "info"], capture_output=True, check=False, timeout=60).returncode == 0:
                return name
        except subprocess.TimeoutExpired:
            continue
    return None


def engine_available() -> bool:
    return container_engine() is not None


def image_exists(engine: str, tag: str) -> bool:
    return subprocess.run([engine, "image", "inspect", tag], capture_output=True, check=False).returncode == 0


def image_id(engine: str, tag: str) -> str:
    r = subprocess.run([engine, "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True, text=True)
    if r.returncode != 0:
        raise InputError(f"{engine} has no image {tag}")
    return r.stdout.strip()


def _run(cmd: list[str], what: str, log: Callable[[str], None]) -> None:
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise InputError(f"{what} failed ({' '.join(cmd[:3])} ...): {(r.stderr or r.stdout).strip()[-1500:]}")
    log(f"{what}: {time.monotonic() - t0:.0f} s")


def debian_base(engine: str, log: Callable[[str], None] = print) -> str:
    """`oncoplan-base:bookworm`, made once from Debian's packages: mmdebstrap (minbase + Python 3.11), imported."""
    if image_exists(engine, DEBIAN_BASE):
        return DEBIAN_BASE
    if shutil.which("mmdebstrap") is None:
        raise InputError(
            "no base image: install mmdebstrap (Debian package) to make one from Debian's packages, "
            "or name an image with Python 3.11 with --base"
        )
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "base.tar"
        cmd = ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}"]
        cmd += ["--aptopt=Acquire::Retries 3", BASE_SUITE, str(tar), *_host_mirror()]
        _run(cmd, f"mmdebstrap {BASE_SUITE} (minbase + python3)", log)
        _run([engine, "import", "--change", 'CMD ["/bin/bash"]', str(tar), DEBIAN_BASE], "import the base", log)
    return DEBIAN_BASE


def _host_mirror() -> list[str]:
    """The Debian mirror this host's apt uses (its sources file), so the base comes from where the host's
    packages do; none found: mmdebstrap's default."""
    for f in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if f.is_file() and BASE_SUITE in f.read_text():
            return [str(f)]
    return []


def build_runtime(engine: str, wheels: Path, base: str | None = None, log: Callable[[str], None] = print) -> str:
    """The runtime image FROM `base` (default: the Debian base), tagged by what it is made of; built only
    when the engine lacks it. Also tagged oncoplan-runtime:latest."""
    base = base or debian_base(engine, log)
    if not image_exists(engine, base):
        raise InputError(f"{engine} has no base image {base}")
    digest = hashlib.sha256(
        (image_id(engine, base) + (wheels / "requirements.txt").read_text() + RUNTIME_DOCKERFILE).encode()
    ).hexdigest()[:12]
    tag = f"{RUNTIME_REPO}:{digest}"
    if not image_exists(engine, tag):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "Dockerfile").write_text(RUNTIME_DOCKERFILE)
            # --no-cache: a layer cache keys RUN --mount steps by their text, not by the wheels they read
            cmd = [engine, "build", "--no-cache", "--network", "none", "--build-arg", f"BASE={base}", "-t", tag]
            _run([*cmd, "-f", str(Path(tmp) / "Dockerfile"), str(wheels)], f"build {tag} (pip --no-index)", log)
    _run([engine, "tag", tag, f"{RUNTIME_REPO}:latest"], "tag the runtime", lambda _: None)
    return tag


def build_image(context: Path, tag: str, engine: str | None = None, log: Callable[[str], None] = print) -> bool:
    """Build a written context with the engine (FROM the runtime its Dockerfile names); False when none answers."""
    engine = engine or container_engine()
    if engine is None:
        return False
    # --no-cache: the oncoplan wheel is bind-mounted, which a layer cache would not see change (a few seconds)
    _run([engine, "build", "--no-cache", "--network", "none", "-t", tag, str(context)], f"build {tag}", log)
    return True


def package(
    name: str,
    out: Path,
    tag: str | None = None,
    build: bool = True,
    base: str | None = None,
    wheelhouse: Path | None = None,
    gpu: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[Path, str | None]:
    """Gather (or take) the wheelhouse, write the context, and build base, runtime and image when an engine
    answers. Returns (context, the image's tag or None when nothing was built)."""
    if name not in IMAGES:
        raise InputError(f"unknown app {name!r}; choose {', '.join(IMAGES)}")
    wheels = check_wheelhouse(wheelhouse) if wheelhouse else gather_wheelhouse(gpu, log)
    engine = container_engine() if build else None
    runtime = build_runtime(engine, wheels, base, log) if engine else f"{RUNTIME_REPO}:latest"
    context = write_context(name, out, wheels, runtime)
    tag = tag or f"oncoplan-{name}:latest"
    if engine is None:
        return context, None
    build_image(context, tag, engine, log)
    return context, tag
