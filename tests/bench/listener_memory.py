"""Listener memory with large instances: the listener's peak RSS (VmHWM) after one 200 MB instance,
then three at once, each over its own association (instances are received into files, not memory).

    python -m tests.bench.listener_memory [--mb 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.pacs import ListenerProcess, Orthanc, free_port, listener_config, make_study, send


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        side = int((args.mb * 2**20 / 2) ** 0.5)
        studies = [make_study(root / f"s{i}", seed=9000 + i, slices=1, size=side) for i in range(4)]
        port = free_port()
        pacs = Orthanc(root / "orthanc")  # configured, never started: results simply wait
        config = listener_config(root, port, pacs, max_instance_mb=args.mb * 2, quiet_period_s=3600)
        listener = ListenerProcess(config, port).start()
        try:
            pid = listener.proc.pid
            idle = peak_rss_mb(pid)
            t0 = time.perf_counter()
            assert send(port, studies[0], timeout_s=300) == [0]
            one = peak_rss_mb(pid)
            with ThreadPoolExecutor(3) as pool:
                statuses = list(pool.map(lambda s: send(port, s, timeout_s=300), studies[1:]))
            assert statuses == [[0]] * 3, statuses
            three = peak_rss_mb(pid)
            elapsed = time.perf_counter() - t0
        finally:
            listener.stop()
    print(
        f"instance {args.mb} MB: listener peak RSS idle {idle:.0f} MB, after one {one:.0f} MB, "
        f"after three at once {three:.0f} MB ({elapsed:.1f} s for all four)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
