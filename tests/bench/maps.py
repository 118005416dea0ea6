"""MAP images: sizes, build times, and a container's start-up and run time against the CLI's.

    python -m tests.bench.maps [--size small|full] [--repeats 3] [--no-write]

Builds (or reuses) oncoplan-ctv:latest and oncoplan-tace:latest with `oncoplan package` (the engine's
layer cache makes a rebuild of unchanged images quick; the first build's times are what the section
records when it built them). Then, per app, on one generated study, alternating after one untimed
warm-up each: the CLI (`oncoplan contour|plan`, a fresh process) and `podman run` of the MAP (no network,
study read-only at the MAP's input). Start-up: `podman run --rm --entrypoint true IMAGE` (the engine's
own cost) and `python3 -c "import oncoplan.apps.<app>"` in the image (the app's imports).
TACE runs with the `cpu` search settings. Both runs use the app's default backend choice.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from oncoplan.deploy.map_package import USER_ID, container_engine, package
from oncoplan.training.synth.cohort import generate_cohort

from ..helpers import cohort_rows
from .report import machine, publish, tool_version


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed: {r.stderr[-2000:]}")
    return time.perf_counter() - t0


def _size_mb(engine: str, tag: str) -> float:
    out = subprocess.run([engine, "image", "inspect", "--format", "{{.Size}}", tag], capture_output=True, text=True)
    return int(out.stdout.strip()) / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["small", "full"], default="small")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    engine = container_engine()
    if engine is None:
        raise SystemExit("no container engine answers (podman info, docker info)")
    work = Path(tempfile.mkdtemp(prefix="bench-maps-"))
    built = {}
    for name in ("ctv", "tace"):
        t0 = time.perf_counter()
        package(name, work / f"ctx-{name}", log=lambda line: print(line, file=sys.stderr))
        built[name] = time.perf_counter() - t0
    breast = generate_cohort("breast", work / "b", 1, seed=5, size=args.size, progress=False)
    liver = generate_cohort("liver", work / "l", 1, seed=6, size=args.size, progress=False)
    row = cohort_rows(breast)[0]
    studies = {
        "ctv": (breast / row["image_dir"], ["contour"], {"ONCOPLAN_NOTE": row["note"]}),
        "tace": (liver / cohort_rows(liver)[0]["TCIA_ID"] / "dicom" / "pre", ["plan", "--settings", "cpu"], {}),
    }
    modules = {"ctv": "oncoplan.apps.ctv_contouring", "tace": "oncoplan.apps.tace_planner"}
    rows = []
    for name, (study, cli_args, env) in studies.items():
        image = f"oncoplan-{name}:latest"
        outs = (work / f"out-{name}-{i}" for i in itertools.count())

        def out_dir(outs=outs) -> Path:
            d = next(outs)
            d.mkdir()
            os.chown(d, USER_ID, USER_ID) if os.geteuid() == 0 else d.chmod(0o777)
            return d

        def cli(study=study, cli_args=cli_args, env=env, out_dir=out_dir) -> float:
            cmd = [sys.executable, "-m", "oncoplan", *cli_args, "-i", str(study), "-o", str(out_dir() / "o")]
            return _timed(cmd, {**os.environ, **env})

        cache = f"oncoplan-bench-cache-{name}"
        subprocess.run([engine, "volume", "rm", "-f", cache], capture_output=True, check=False)

        def container(study=study, env=env, image=image, name=name, out_dir=out_dir, cache=None) -> float:
            cmd = [engine, "run", "--rm", "--network", "none", "-v", f"{study}:/var/holoscan/input:ro"]
            cmd += ["-v", f"{cache}:/var/holoscan/cache"] if cache else []
            cmd += ["-v", f"{out_dir()}:/var/holoscan/output"]
            cmd += [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
            if name == "tace":
                cmd += ["-e", "ONCOPLAN_TACE_SETTINGS=cpu"]
            return _timed([*cmd, image])

        cli(), container(), container(cache=cache)
        times: dict[str, list[float]] = {"cli": [], "map": [], "cached": []}
        for _ in range(args.repeats):
            times["cli"].append(cli())
            times["map"].append(container())
            times["cached"].append(container(cache=cache))
        subprocess.run([engine, "volume", "rm", "-f", cache], capture_output=True, check=False)
        bare = statistics.median(
            _timed([engine, "run", "--rm", "--network", "none", "--entrypoint", "true", image]) for _ in range(3)
        )
        imports = statistics.median(
            _timed(
                [
                    engine,
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    "--entrypoint",
                    "python3",
                    image,
                    "-c",
                    f"import {modules[name]}.app",
                ]
            )
            for _ in range(3)
        )
        cli_s, map_s, cached_s = (statistics.median(times[k]) for k in ("cli", "map", "cached"))
        rows.append(
            f"| {name} | {_size_mb(engine, image):,.0f} MB | {built[name]:.0f} s | {bare:.2f} s | {imports:.1f} s "
            f"| {cli_s:.1f} s | {map_s:.1f} s ({map_s / cli_s:.2f}x) | {cached_s:.1f} s ({cached_s / cli_s:.2f}x) |"
        )
    runtime_mb = _size_mb(engine, "oncoplan-runtime:latest")
    lines = [
        f"Command: `python -m tests.bench.maps --size {args.size} --repeats {args.repeats}`  ",
        f"Machine: {machine()}.  ",
        f"Engine: {tool_version([engine, '--version'])} ({tool_version(['runc', '--version'])}).  ",
        f"Study: one generated `--size {args.size}` study per app; median of {args.repeats} runs after one warm-up "
        "each, CLI and container alternating. Image sizes as the engine reports them; the two MAPs share the "
        f"runtime image ({runtime_mb:,.0f} MB: Debian base + the wheelhouse's venv), so both together take about "
        "runtime + their app layers on disk. Package: `oncoplan package` wall time in this run, with the wheelhouse, "
        "base and runtime already built (an unchanged runtime is reused; its first build is timed by the test "
        "run in the section's notes).",
        "",
        "The CLI keeps the engines it exports (ONNX, OpenVINO) in ~/.cache/oncoplan between runs; a fresh "
        "container exports and times them again on every run, unless a volume is mounted at /var/holoscan/cache "
        "(last column: a named volume, filled by the warm-up run).",
        "",
        "| MAP | image size | package (this run) | engine start-up (`true`) | app imports in the image | CLI | "
        "container (x CLI) | container + cache volume (x CLI) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    return publish("MAP images", lines, not args.no_write)


if __name__ == "__main__":
    raise SystemExit(main())
