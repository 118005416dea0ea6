"""Listener ingest: instances per second into the durable spool vs dcmtk's storescp, same
machine, same sender (dcmtk's storescu), same data, side by side in one run.

    python -m tests.bench.ingest [--studies 8] [--slices 25] [--repeats 3]

Receivers: storescp as installed (Nagle on), storescp with TCP_NODELAY=1 (dcmtk's switch),
`oncoplan listen` (fsync + rename + SQLite commit before each success), and a pynetdicom SCP that
stores nothing (`tests/bench/null_scp.py`: the ceiling of any pynetdicom receiver). Senders:
storescu as installed, and storescu with TCP_NODELAY=1. Patterns: one association with every
instance, and one association per study, all at once. dcmtk's tools are found past the virtual
environment, whose pynetdicom installs Python apps of the same names.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from ..pacs import dcmtk, free_port, make_study, wait_for
from .report import machine, publish, tool_version, versions

WHY = (
    "**Why one association is latency-bound (~45 ms per instance) as dcmtk is installed:** Nagle's "
    "algorithm holds a small segment (the tail of a C-STORE request, or the small C-STORE response) until "
    "the previous one is acknowledged, and Linux delays that ACK by up to 40 ms, so each DIMSE exchange "
    "waits about one delayed-ACK period. dcmtk turns Nagle off only with `TCP_NODELAY=1` in its "
    "environment: storescu -> storescp went from {slow:.0f}/s (both as installed) to {fast:.0f}/s (both "
    "with TCP_NODELAY=1). The listener sets TCP_NODELAY on every accepted connection and on its own "
    "C-STORE sender, so the peer's setting no longer matters; what bounds one association instead is mostly CPU: "
    "pynetdicom's Python work per PDU ({bare:.1f} ms an instance when it stores nothing) and the "
    "durability the listener owes before each success status (write, fsync, rename, directory fsync, a "
    "synchronous SQLite commit), {ours:.1f} ms in all, which storescp does not do."
)
LABELS = {
    "storescp": "storescp",
    "storescp-nodelay": "storescp TCP_NODELAY=1",
    "listener": "oncoplan listen",
    "listener-many": "oncoplan listen, receivers: {n}",
    "pynetdicom": "pynetdicom, storing nothing",
}
CONCURRENCY = (
    "**Why concurrent associations do not add up:** pynetdicom polls. Each association runs two "
    "threads that each wake every millisecond when idle (the DUL reactor's `_run_loop_delay` and the "
    "association reactor's `time.sleep(0.001)`), and every wake-up takes the GIL, so eight "
    "associations mean some 16,000 wake-ups a second contending with the threads that have work. "
    "The SCP that stores nothing shows it is pynetdicom's, not the spool's: its rate falls as well when "
    "the same instances come over eight associations instead of one. `receivers: N` runs the SCP in N "
    "processes on the port (SO_REUSEPORT), which takes the associations out of one interpreter; on a "
    "2-core machine that also runs the senders it cannot reach 5x, on a server with more cores it scales "
    "further."
)


def _env(nodelay: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    return env | ({"TCP_NODELAY": "1"} if nodelay else {})


def _echo_ok(port: int, called: str) -> bool:
    out = subprocess.run(
        [dcmtk("echoscu"), "-aet", "STORESCU", "-aec", called, "127.0.0.1", str(port)], capture_output=True
    )
    return out.returncode == 0


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:  # a thread may end between the listing and the read (the listener's per-connection threads do)
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
    return [pid, *(p for kid in kids for p in _tree(kid))]


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # ended between listing and reading
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Receiver:
    def __init__(self, kind: str, root: Path, receivers: int = 1) -> None:
        self.kind, self.root, self.port = kind, root, free_port()
        self.receivers = receivers  # the listener's receiving processes
        self.called = "ONCOPLAN" if kind.startswith("listener") else "NULLSCP" if kind == "pynetdicom" else "STORESCP"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        store = self.root / f"{self.kind}-{time.monotonic_ns()}"
        store.mkdir(parents=True)
        if self.kind == "pynetdicom":
            cmd, env = [sys.executable, "-m", "tests.bench.null_scp", str(self.port)], _env(False)
        elif self.kind.startswith("listener"):
            config = store / "listener.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "ae_title": "ONCOPLAN",
                        "host": "127.0.0.1",
                        "port": self.port,
                        "spool": str(store / "spool"),
                        "allowed_callers": ["STORESCU"],
                        "quiet_period_s": 3600,
                        "min_free_mb": 0,
                        "receivers": self.receivers,
                        "destinations": {"none": {"ae_title": "NONE", "host": "127.0.0.1", "port": 1}},
                        "routes": [{"name": "none", "command": ["true", "{input}", "{output}"], "destination": "none"}],
                    }
                )
            )
            cmd, env = [sys.executable, "-m", "oncoplan", "listen", "--config", str(config)], _env(False)
        else:
            cmd = [dcmtk("storescp"), "-aet", "STORESCP", "-od", str(store), str(self.port)]
            env = _env(self.kind == "storescp-nodelay")
        log = store / "stderr.log"
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        wait_for(lambda: _echo_ok(self.port, self.called), 60, f"{self.kind} to answer")
        extra = self.receivers - 1  # time the receiving processes, not their start-up
        wait_for(lambda: log.read_text().count('"receiver_started"') == extra, 60, "the receiving processes")

    def cpu_seconds(self) -> float:
        """User + system CPU the receiver and its live child processes have used so far (Linux /proc)."""
        assert self.proc is not None
        return sum(_cpu_seconds(pid) for pid in _tree(self.proc.pid))

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        for d in self.root.glob(f"{self.kind}-*"):
            shutil.rmtree(d, ignore_errors=True)


def _send(receiver: Receiver, groups: list[list[Path]], nodelay: bool) -> float:
    """Seconds to send every group, one storescu association per group, all groups at once."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                dcmtk("storescu"),
                "-aet",
                "STORESCU",
                "-aec",
                receiver.called,
                "127.0.0.1",
                str(receiver.port),
                *map(str, g),
            ],
            env=_env(nodelay),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for g in groups
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-300:]}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument("--slices", type=int, default=25)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--receivers", type=int, default=2, help="receiving processes of the second listener column")
    ap.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="oncoplan-ingest-"))
    try:
        studies = [
            make_study(root / "data" / f"s{i}", seed=9000 + i, slices=args.slices, size=args.size)
            for i in range(args.studies)
        ]
        n = sum(map(len, studies))
        patterns = {"1 association": [[p for s in studies for p in s]], f"{args.studies} associations": studies}
        receivers = ["storescp", "storescp-nodelay", "listener", "listener-many", "pynetdicom"]
        rates: dict[tuple[str, str, bool], float] = {}
        cpu_ms: dict[tuple[str, str, bool], float] = {}  # receiver CPU per instance
        runs = [(r, pat, nd) for r in receivers for nd in (False, True) for pat in patterns]
        for rec_kind, pattern, nodelay in tqdm(runs, desc="ingest"):
            receiver = Receiver(rec_kind, root, args.receivers if rec_kind == "listener-many" else 1)
            times, cpu = [], []
            for _ in range(args.repeats):
                receiver.start()  # a fresh, empty store every repetition
                try:
                    before = receiver.cpu_seconds()
                    times.append(_send(receiver, patterns[pattern], nodelay))
                    cpu.append(receiver.cpu_seconds() - before)
                finally:
                    receiver.stop()
            rates[(rec_kind, pattern, nodelay)] = n / statistics.median(times)
            cpu_ms[(rec_kind, pattern, nodelay)] = 1e3 * statistics.median(cpu) / n
        mb = sum(p.stat().st_size for s in studies for p in s) / 2**20
    finally:
        shutil.rmtree(root, ignore_errors=True)

    lines = [
        f"Command: `python -m tests.bench.ingest --studies {args.studies} --slices {args.slices} --size {args.size} "
        f"--repeats {args.repeats} --receivers {args.receivers}`  ",
        f"Data: {n} CT instances of {args.size}x{args.size} (16-bit, {mb:.0f} MB in all), {args.studies} studies; "
        f"median of {args.repeats} repetitions, each into a fresh store.  ",
        f"Machine: {machine()}.  ",
        f"Versions: {versions('pynetdicom', 'pydicom')}, {tool_version([dcmtk('storescu'), '--version'])}.",
        "",
        "| sender (storescu) | pattern | storescp | storescp TCP_NODELAY=1 | oncoplan listen | listen / storescp "
        f"| oncoplan listen, receivers: {args.receivers} | pynetdicom, storing nothing |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for nodelay in (False, True):
        for pattern in patterns:
            s, s_nd, ours, ours_n, bare = (rates[(k, pattern, nodelay)] for k in receivers)
            sender = "TCP_NODELAY=1" if nodelay else "as installed"
            lines.append(
                f"| {sender} | {pattern} | {s:.0f}/s | {s_nd:.0f}/s | {ours:.0f}/s | {ours / s:.2f}x "
                f"| {ours_n:.0f}/s | {bare:.0f}/s |"
            )
    one, many = patterns
    lines += [
        "",
        f"Sender as installed: {many} at once vs one association, and the receiver's CPU per instance:",
        "",
        f"| receiver | rate, {many} / 1 | CPU per instance, 1 association | CPU per instance, {many} |",
        "|---|---|---|---|",
    ]
    for kind in receivers:
        ratio = rates[(kind, many, False)] / rates[(kind, one, False)]
        single_ms, many_ms = cpu_ms[(kind, one, False)], cpu_ms[(kind, many, False)]
        label = LABELS[kind].format(n=args.receivers)
        lines.append(f"| {label} | {ratio:.2f}x | {single_ms:.1f} ms | {many_ms:.1f} ms |")
    lines += [
        "",
        WHY.format(
            slow=rates[("storescp", one, False)],
            fast=rates[("storescp-nodelay", one, True)],
            bare=cpu_ms[("pynetdicom", one, False)],
            ours=cpu_ms[("listener", one, False)],
        ),
        "",
        CONCURRENCY,
    ]
    return publish("Listener ingest", lines, write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
