"""MAP build context: manifests per the MAP specification, the app and bundle inside, runnable on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oncoplan.deploy.map_package import write_context
from oncoplan.errors import InputError
from oncoplan.training.synth.cohort import generate_cohort

from .helpers import cohort_rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_context("ctv", tmp_path_factory.mktemp("map") / "ctx")


def test_context_holds_manifests_app_models_and_requirements(context: Path) -> None:
    app = json.loads((context / "app.json").read_text())
    pkg = json.loads((context / "pkg.json").read_text())
    assert json.loads(app["command"])[-1] == "oncoplan.apps.ctv_contouring"
    env = app["environment"]
    assert env["HOLOSCAN_MODEL_PATH"] == pkg["modelRoot"] == "/opt/holoscan/models"
    assert pkg["models"] == {"ctv_llmseg": "/opt/holoscan/models/ctv_llmseg"}
    assert app["sdk"] == "monai-deploy" and app["sdkVersion"]
    for f in ("Dockerfile", "requirements.txt", "app/app.py", "app/app.yaml", "build.sh"):
        assert (context / f).is_file(), f
    assert len(list((context / "dist").glob("oncoplan-*.whl"))) == 1  # installed --no-index --no-deps
    assert (context / "models/ctv_llmseg/configs/inference.json").is_file()
    assert (context / "models/ctv_llmseg/models/model.pt").is_file()
    assert not (context / "models/ctv_llmseg/data").exists()  # no training data in an image
    docker = (context / "Dockerfile").read_text()
    assert "COPY app.json pkg.json /etc/holoscan/" in docker and "HOLOSCAN_INPUT_PATH" in docker
    # Offline: FROM the shared runtime; nothing in the Dockerfile reaches an index; the user is not root.
    assert "FROM ${RUNTIME}" in docker and "--no-index" in docker and "USER 1000:1000" in docker
    assert "index-url" not in docker and "http" not in docker


def test_refuses_unknown_app_and_non_empty_folder(tmp_path: Path, context: Path) -> None:
    with pytest.raises(InputError, match="unknown app"):
        write_context("nope", tmp_path / "x")
    with pytest.raises(InputError, match="not empty"):
        write_context("ctv", context)


def _run_from_context(
    module: str, study: Path, context: Path, tmp_path: Path, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess, Path]:
    """Run an app as its container would: HOLOSCAN_* variables, models from the context, cwd the workdir."""
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **os.environ,
        "HOLOSCAN_INPUT_PATH": str(study),
        "HOLOSCAN_OUTPUT_PATH": str(work / "output"),
        "HOLOSCAN_MODEL_PATH": str(context / "models"),
        **(extra_env or {}),
    }
    cmd = [sys.executable, "-u", "-m", module]
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, check=False, timeout=600)
    return r, work


def test_app_runs_from_the_context_on_cpu(context: Path, tmp_path: Path) -> None:
    """As the container would: HOLOSCAN_* variables, models from the context, cwd the workdir."""
    cohort = generate_cohort("breast", tmp_path / "c", 1, seed=5, size="small", progress=False)
    study = cohort / cohort_rows(cohort)[0]["image_dir"]
    r, work = _run_from_context("oncoplan.apps.ctv_contouring", study, context, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (work / "output").iterdir()) == ["ctv_note.json", "ctv_rtstruct.dcm", "ctv_seg.dcm"]
    assert str(context / "models" / "ctv_llmseg") in r.stderr + r.stdout  # the context's bundle ran


def test_tace_context_holds_its_three_bundles_and_runs_on_cpu(tmp_path: Path) -> None:
    """The TACE MAP: manifests name the three bundles; the app runs from the context the container's
    way (HOLOSCAN_* variables, the context's shipped weights) with a small search."""
    from oncoplan.operators.tace_planning import SETTINGS_ENV

    context = write_context("tace", tmp_path / "ctx")
    app = json.loads((context / "app.json").read_text())
    pkg = json.loads((context / "pkg.json").read_text())
    assert json.loads(app["command"])[-1] == "oncoplan.apps.tace_planner"
    bundles = ("tace_assistant", "tace_dynamics", "tace_survival")
    assert pkg["models"] == {b: f"/opt/holoscan/models/{b}" for b in bundles}
    assert all((context / "models" / b / "models" / "model.pt").is_file() for b in bundles)
    cohort = generate_cohort("liver", tmp_path / "c", 1, seed=6, size="small", progress=False)
    study = cohort / cohort_rows(cohort)[0]["TCIA_ID"] / "dicom" / "pre"
    settings = {"beam": 1, "samples": 1, "steps": 2, "drug_horizon": 1, "embolic_horizon": 1}
    r, work = _run_from_context(
        "oncoplan.apps.tace_planner", study, context, tmp_path, {SETTINGS_ENV: json.dumps(settings)}
    )
    assert r.returncode == 0, r.stderr[-3000:]
    written = sorted(p.name for p in (work / "output").iterdir())
    assert {"plan.json", "tace_plan_sr.dcm", "tace_post_seg.dcm", "tace_report_pdf.dcm"} <= set(written), written


def test_runtime_installs_every_pinned_wheel_of_the_wheelhouse_with_no_index(tmp_path: Path) -> None:
    """The runtime's one install step reads only the bind-mounted wheelhouse (no index, no network), whose
    requirements.txt pins every wheel in it; the wheelhouse asks for the CPU torch (CUDA + TensorRT with --gpu)
    and the CUDA runtime library Holoscan links."""
    from oncoplan.deploy.map_package import RUNTIME_DOCKERFILE, TORCH, check_wheelhouse, runtime_requirements

    for name in ("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "python_gdcm-3.2.6-cp311-cp311-any.whl"):
        (tmp_path / name).write_bytes(b"")
    pins = (check_wheelhouse(tmp_path) / "requirements.txt").read_text().split()
    assert pins == ["python-gdcm==3.2.6", "torch==2.13.0+cpu"]
    assert "--no-index --find-links /wheelhouse -r /wheelhouse/requirements.txt" in RUNTIME_DOCKERFILE
    assert "--mount=type=bind,target=/wheelhouse" in RUNTIME_DOCKERFILE
    cpu, gpu = runtime_requirements(), runtime_requirements(gpu=True)
    assert TORCH in cpu and any(r.startswith("nvidia-cuda-runtime") for r in cpu)
    assert not any(r.startswith("tensorrt") for r in cpu) and any(r.startswith("tensorrt") for r in gpu)
    assert not any(r.startswith("scikit-survival") for r in cpu + gpu)  # GPL-3.0, used by training only
    with pytest.raises(InputError, match="not a folder of wheels"):
        check_wheelhouse(tmp_path / "missing")
