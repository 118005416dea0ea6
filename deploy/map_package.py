"""`oncoplan package ctv|tace --out DIR`: a MONAI Application Package (MAP) build context.

The layout and manifests follow the MAP specification as the SDK's packager (holoscan-cli)
writes them: the app under /opt/holoscan/app, models under /opt/holoscan/models/<name>,
/etc/holoscan/app.json (how to run it) and pkg.json (what it needs), and the HOLOSCAN_*
variables that point the app at its input, output and models. The image is built with the
container engine when one answers; otherwise the context is left ready for `docker build`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from oncoplan import __version__
from oncoplan.errors import InputError
from oncoplan.fsio import atomic_output_dir
from oncoplan.runtime.bundles import CTV_BUNDLE, TACE_BUNDLES

REPO = Path(__file__).resolve().parents[1]
SOURCE_TREES = ("oncoplan", "training", "apps", "operators", "deploy")
SOURCE_FILES = ("pyproject.toml", "constraints.txt", "README.md")
APP_ROOT, MODEL_ROOT, WORKDIR = "/opt/holoscan/app", "/opt/holoscan/models", "/var/holoscan"


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


def dockerfile(spec: AppSpec) -> str:
    return f"""# MONAI Application Package: {spec.title}
FROM python:3.11-slim
LABEL org.opencontainers.image.title="{spec.title}" org.opencontainers.image.version="{__version__}"
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# CPU torch first so nothing pulls a CUDA build; a GPU image swaps this line for a CUDA wheel + tensorrt.
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
COPY src /opt/oncoplan
RUN pip install -c /opt/oncoplan/constraints.txt /opt/oncoplan
COPY app {APP_ROOT}
COPY models {MODEL_ROOT}
COPY app.json pkg.json /etc/holoscan/
ENV {" ".join(f'{k}="{v}"' for k, v in app_manifest(spec)["environment"].items())}
RUN useradd --create-home holoscan && mkdir -p {WORKDIR}/input {WORKDIR}/output {WORKDIR}/logs \\
    && chown -R holoscan {WORKDIR}
USER holoscan
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


def write_context(name: str, out: Path) -> Path:
    """Write the build context for app `name` into `out` (which must not exist or be empty)."""
    if name not in APPS:
        raise InputError(f"unknown app {name!r}; choose {', '.join(APPS)}")
    spec = APPS[name]
    with atomic_output_dir(out) as tmp:
        src = tmp / "src"
        src.mkdir()
        for tree in SOURCE_TREES:
            shutil.copytree(REPO / tree, src / tree, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for f in SOURCE_FILES:
            shutil.copy2(REPO / f, src / f)
        shutil.copytree(REPO / "apps" / spec.app_dir, tmp / "app", ignore=shutil.ignore_patterns("__pycache__"))
        for bundle in spec.bundles:
            _copy_bundle(REPO / "bundles" / bundle, tmp / "models" / bundle)
        (tmp / "app.json").write_text(json.dumps(app_manifest(spec), indent=2) + "\n")
        (tmp / "pkg.json").write_text(json.dumps(package_manifest(spec), indent=2) + "\n")
        (tmp / "Dockerfile").write_text(dockerfile(spec))
        (tmp / "requirements.txt").write_text((REPO / "constraints.txt").read_text())
    return Path(out)


def engine_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30).returncode == 0


def build_image(context: Path, tag: str) -> bool:
    """Build with docker when a daemon answers; False (nothing built) otherwise."""
    if not engine_available():
        return False
    subprocess.run(["docker", "build", "-t", tag, str(context)], check=True)
    return True
