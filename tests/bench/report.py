"""Writes one benchmark's section into BENCHMARKS.md, replacing that section's previous run."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nSpeed and memory, measured by the commands named in each section. Synthetic inputs.\n"


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = int(next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")))
    return f"{os.cpu_count()} cores ({cpu}), {mem / 2**20:.0f} GiB RAM, {platform.platform()}"


def versions(*packages: str) -> str:
    return ", ".join(f"{p} {_version(p)}" for p in packages)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def tool_version(command: list[str]) -> str:
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def median_seconds(fn, repeats: int, warmups: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmups` untimed ones."""
    for _ in range(warmups):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def publish(name: str, lines: list[str], write: bool) -> int:
    """Print a benchmark's section and, if `write`, put it into BENCHMARKS.md."""
    body = "\n".join(lines)
    print(body)
    if write:
        print(f"wrote {write_section(name, body)}")
    return 0


def write_section(name: str, body: str) -> Path:
    """Replace (or add) the section `## name` of BENCHMARKS.md."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section = f"## {name}\n\n_Run {stamp}._\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    BENCHMARKS.write_text(text)
    return BENCHMARKS
