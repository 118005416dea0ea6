"""The MAP images built offline and run for real: `oncoplan package` (wheelhouse -> Debian base made with
mmdebstrap -> the shared runtime installed with pip --no-index -> the app), then `podman run` (or docker) of
each MAP on a generated study writes what the CLI writes on the same study (same SEG voxels, same plan
ranking). Where no container engine answers, every test here is skipped and says so; on CI (CI set), where
.ci/run installs podman, that is a failure instead.

All container tests live in this one file: `./run test` gives a file to one worker (--dist loadfile), so
the images are built once per session (and reused from the engine's store when nothing changed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from oncoplan.deploy.map_package import USER_ID, container_engine, package
from oncoplan.training.synth.cohort import generate_cohort

from .helpers import cohort_rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# One thread and eager PyTorch in both runs, so the CLI and the container compute the same numbers.
SAME = {"OMP_NUM_THREADS": "1", "ONCOPLAN_BACKENDS": "torch"}
TACE_SETTINGS = json.dumps({"beam": 2, "samples": 1, "steps": 2, "drug_horizon": 1, "embolic_horizon": 1})


def engine_or_skip() -> str:
    engine = container_engine()
    if engine is None:
        why = "no container engine answers (`podman info` and `docker info` fail), so no MAP image is built or run here"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI machines have podman (.ci/run installs and configures it)")
        pytest.skip(why)
    return engine


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Both MAP images, built as the README says (`oncoplan package ctv|tace`), with their build times."""
    engine = engine_or_skip()
    out = tmp_path_factory.mktemp("maps")
    built: dict[str, str] = {"engine": engine}
    for name in ("ctv", "tace"):
        t0 = time.monotonic()
        _, tag = package(name, out / name, tag=f"oncoplan-{name}:test", log=lambda line: print(line, flush=True))
        assert tag == f"oncoplan-{name}:test"
        built[name] = tag
        print(f"{name}: packaged in {time.monotonic() - t0:.0f} s", flush=True)
    return built


def run_map(engine: str, image: str, study: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`podman run` as a site runs a MAP: the study read-only at the MAP's input, a folder at its output, no network."""
    out.mkdir(parents=True)
    os.chown(out, USER_ID, USER_ID) if os.geteuid() == 0 else out.chmod(0o777)
    cmd = [engine, "run", "--rm", "--network", "none"]
    cmd += ["-v", f"{study}:/var/holoscan/input:ro", "-v", f"{out}:/var/holoscan/output"]
    for k, v in env.items():
        cmd += ["-e", f"{k}={v}"]
    return subprocess.run([*cmd, image], capture_output=True, text=True, check=False, timeout=900)


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "oncoplan", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900, env={**os.environ, **env})


def _seg_frames(path: Path) -> tuple[np.ndarray, list[str]]:
    ds = pydicom.dcmread(path)
    return ds.pixel_array, [s.SegmentLabel for s in ds.SegmentSequence]


def test_map_images_have_the_map_layout_and_run_as_non_root(images: dict[str, str]) -> None:
    engine = images["engine"]
    for name, module in (("ctv", "oncoplan.apps.ctv_contouring"), ("tace", "oncoplan.apps.tace_planner")):
        probe = (
            "import json,os; print(json.dumps([os.getuid(), json.load(open('/etc/holoscan/app.json')), "
            "json.load(open('/etc/holoscan/pkg.json')), sorted(os.listdir('/opt/holoscan/models')), "
            "os.path.isdir('/opt/holoscan/app'), {k: v for k, v in os.environ.items() if k.startswith('HOLOSCAN_')}]))"
        )
        r = subprocess.run(
            [engine, "run", "--rm", "--network", "none", "--entrypoint", "python3", images[name], "-c", probe],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        uid, app, pkg, models, has_app, env = json.loads(r.stdout.strip().splitlines()[-1])
        assert uid == USER_ID != 0
        assert json.loads(app["command"])[-1] == module and has_app
        assert sorted(pkg["models"]) == models
        assert env["HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models" and env["HOLOSCAN_INPUT_PATH"] == "input/"
    # No GPL-licensed Python package in an image we ship (scikit-survival and ecos are training-only).
    probe = (  # the licence expression, the licence classifiers, or a one-line License field (not a licence text)
        "from importlib.metadata import distributions as ds\n"
        "def lic(m):\n"
        "    short = (m.get('License') or '') if len((m.get('License') or '')) < 80 else ''\n"
        "    cls = [c for c in (m.get_all('Classifier') or []) if c.startswith('License')]\n"
        "    text = ' '.join([m.get('License-Expression') or '', short, *cls])\n"
        "    return text.replace('LGPL', '').replace('Lesser General Public', '')\n"
        "print([d.metadata['Name'] for d in ds() if 'GPL' in lic(d.metadata) or 'General Public' in lic(d.metadata)])"
    )
    r = subprocess.run(
        [engine, "run", "--rm", "--network", "none", "--entrypoint", "python3", images["ctv"], "-c", probe],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "[]", r.stdout + r.stderr[-2000:]
    # Both MAPs are built FROM one runtime: the engine stores its layers once.
    layers = {
        name: subprocess.run(
            [engine, "image", "inspect", "--format", "{{json .RootFS.Layers}}", images[name]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for name in ("ctv", "tace")
    }
    ctv, tace = (json.loads(layers[n]) for n in ("ctv", "tace"))
    shared = [a for a, b in zip(ctv, tace, strict=False) if a == b]
    assert len(shared) >= 3, (ctv, tace)  # the base and the runtime's two layers


def test_ctv_map_writes_what_the_cli_writes(images: dict[str, str], tmp_path: Path) -> None:
    cohort = generate_cohort("breast", tmp_path / "c", 1, seed=5, size="small", progress=False)
    row = cohort_rows(cohort)[0]
    study = cohort / row["image_dir"]
    env = {**SAME, "ONCOPLAN_NOTE": row["note"]}
    t0 = time.monotonic()
    cli = run_cli(["contour", "-i", str(study), "-o", str(tmp_path / "cli")], env)
    t_cli = time.monotonic() - t0
    assert cli.returncode == 0, cli.stderr[-3000:]
    t0 = time.monotonic()
    r = run_map(images["engine"], images["ctv"], study, tmp_path / "map", env)
    t_map = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"ctv: CLI {t_cli:.1f} s, container {t_map:.1f} s")
    names = sorted(p.name for p in (tmp_path / "map").iterdir())
    assert (
        names
        == sorted(p.name for p in (tmp_path / "cli").iterdir())
        == ["ctv_note.json", "ctv_rtstruct.dcm", "ctv_seg.dcm"]
    )
    cli_seg, cli_labels = _seg_frames(tmp_path / "cli" / "ctv_seg.dcm")
    map_seg, map_labels = _seg_frames(tmp_path / "map" / "ctv_seg.dcm")
    assert cli_labels == map_labels and cli_seg.any()
    np.testing.assert_array_equal(map_seg, cli_seg)
    cli_rt, map_rt = (pydicom.dcmread(tmp_path / d / "ctv_rtstruct.dcm") for d in ("cli", "map"))
    contours = [
        [[float(v) for v in c.ContourData] for c in ds.ROIContourSequence[0].ContourSequence] for ds in (cli_rt, map_rt)
    ]
    assert contours[0] == contours[1]
    note = [json.loads((tmp_path / d / "ctv_note.json").read_text()) for d in ("cli", "map")]
    assert note[0]["model_note"] == note[1]["model_note"] if "model_note" in note[0] else note[0] == note[1]


def test_tace_map_writes_what_the_cli_writes(images: dict[str, str], tmp_path: Path) -> None:
    from oncoplan.operators.tace_planning import SETTINGS_ENV

    cohort = generate_cohort("liver", tmp_path / "c", 1, seed=6, size="small", progress=False)
    study = cohort / cohort_rows(cohort)[0]["TCIA_ID"] / "dicom" / "pre"
    env = {**SAME, SETTINGS_ENV: TACE_SETTINGS}
    t0 = time.monotonic()
    cli = run_cli(["plan", "-i", str(study), "-o", str(tmp_path / "cli")], env)
    t_cli = time.monotonic() - t0
    assert cli.returncode == 0, cli.stderr[-3000:]
    t0 = time.monotonic()
    r = run_map(images["engine"], images["tace"], study, tmp_path / "map", env)
    t_map = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"tace: CLI {t_cli:.1f} s, container {t_map:.1f} s")
    written = sorted(p.name for p in (tmp_path / "map").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert {"plan.json", "tace_plan_sr.dcm", "tace_post_seg.dcm", "tace_report_pdf.dcm"} <= set(written)
    plans = [json.loads((tmp_path / d / "plan.json").read_text()) for d in ("cli", "map")]
    ranking = [[(p["protocol"], p["mean_risk"]) for p in plan["ranked"]] for plan in plans]
    assert ranking[0] == ranking[1] and len(ranking[0]) > 1
    assert plans[0]["best"]["protocol"] == plans[1]["best"]["protocol"]
    assert plans[0]["simulated_post_treatment_voxels"] == plans[1]["simulated_post_treatment_voxels"]
    cli_seg, _ = _seg_frames(tmp_path / "cli" / "tace_post_seg.dcm")
    map_seg, _ = _seg_frames(tmp_path / "map" / "tace_post_seg.dcm")
    np.testing.assert_array_equal(map_seg, cli_seg)


# --- the PACS stack in containers (deploy/compose) --------------------------------------------------------
COMPOSE = Path(__file__).resolve().parents[1] / "deploy" / "compose"


def compose_command(engine: str) -> list[str]:
    import shutil

    if engine == "podman":
        if shutil.which("podman-compose") is None:
            pytest.fail("podman answers but podman-compose is missing (Debian package podman-compose; ./run setup)")
        return ["podman-compose"]
    return ["docker", "compose"]


def _orthanc(port: int, path: str, data: bytes | None = None, timeout: float = 60):
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method="POST" if data is not None else "GET"
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


@pytest.fixture(scope="module")
def stack(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """The compose stack as deploy/compose/docker-compose.yml says: the listener image (`oncoplan package
    listener`), Orthanc built from Debian's package, both started by podman-compose on free host ports."""
    from .pacs import free_port, wait_for

    engine = images["engine"]
    out = tmp_path_factory.mktemp("stack")
    t0 = time.monotonic()
    package("listener", out / "listener", log=lambda line: print(line, flush=True))
    build = [engine, "build", "--network", "host", "-t", "oncoplan-orthanc:latest"]
    built = subprocess.run(
        [*build, "-f", str(COMPOSE / "orthanc.Dockerfile"), str(COMPOSE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    print(f"stack images: {time.monotonic() - t0:.0f} s", flush=True)
    ports = {
        k: str(free_port())
        for k in ("ORTHANC_DICOM_PORT", "ORTHANC_HTTP_PORT", "LISTENER_DICOM_PORT", "LISTENER_HEALTH_PORT")
    }
    env = {**os.environ, **ports}
    compose = [*compose_command(engine), "-p", "oncoplantest", "-f", str(COMPOSE / "docker-compose.yml")]
    subprocess.run([*compose, "down", "-v"], env=env, capture_output=True, check=False, timeout=300)
    t0 = time.monotonic()
    up = subprocess.run([*compose, "up", "-d"], env=env, capture_output=True, text=True, check=False, timeout=600)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    http = int(ports["ORTHANC_HTTP_PORT"])

    def alive() -> bool:
        try:
            return bool(_orthanc(http, "/system", timeout=5))
        except OSError:
            return False

    try:
        wait_for(alive, 120, "Orthanc's REST API in the stack")
        print(f"stack up: {time.monotonic() - t0:.0f} s", flush=True)
        yield {"http": http, "compose": compose, "env": env, "engine": engine}
    finally:
        logs = subprocess.run([*compose, "logs"], env=env, capture_output=True, text=True, check=False, timeout=120)
        print(logs.stdout[-6000:], logs.stderr[-2000:])
        subprocess.run([*compose, "down", "-v"], env=env, capture_output=True, check=False, timeout=300)


def test_compose_stack_contours_a_study_stored_into_its_orthanc(stack: dict, tmp_path: Path) -> None:
    """A breast CT study and its note (a text SR) are stored into the stack's Orthanc and sent on to the
    listener (Orthanc's modality `oncoplan`); the CTV app runs in the listener's container and its RTSTRUCT
    and SEG arrive back in Orthanc, in the same study."""
    from .helpers import text_sr
    from .pacs import wait_for

    cohort = generate_cohort("breast", tmp_path / "c", 1, seed=71, size="small", progress=False)
    row = cohort_rows(cohort)[0]
    ct = sorted((cohort / row["image_dir"]).glob("*.dcm"))
    text_sr(pydicom.dcmread(ct[0]), row["note"]).save_as(tmp_path / "note.dcm")
    http = stack["http"]
    studies = {_orthanc(http, "/instances", f.read_bytes())["ParentStudy"] for f in [*ct, tmp_path / "note.dcm"]}
    (study,) = studies
    t0 = time.monotonic()
    _orthanc(http, "/modalities/oncoplan/store", study.encode(), timeout=300)

    def modalities() -> set[str]:
        return {s["MainDicomTags"].get("Modality") for s in _orthanc(http, f"/studies/{study}/series")}

    wait_for(lambda: {"RTSTRUCT", "SEG"} <= modalities(), 900, "RTSTRUCT and SEG back in the stack's Orthanc", 2)
    print(f"stack: study sent to results in Orthanc {time.monotonic() - t0:.0f} s (quiet period 30 s included)")
