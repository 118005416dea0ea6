"""Real DICOM parts for the listener tests: an Orthanc PACS on loopback, small CT studies,
senders (pynetdicom and dcmtk's storescu), and the listener as a separate process."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_context

from oncoplan.deploy.listener.requestor import WrongResponse, hand_responses_back

REPO = Path(__file__).resolve().parents[1]
APP = Path(__file__).resolve().parent / "listener_app.py"
ORTHANC = shutil.which("Orthanc")


def dcmtk(tool: str) -> str:
    """dcmtk's `tool` (storescu, storescp, echoscu), never pynetdicom's Python apps of the same
    names, which an activated virtual environment puts first on PATH: ours, or another one activated in
    the shell that started the tests (a CI run of a fresh clone from a developer's shell)."""
    venv_bin = Path(sys.prefix) / "bin"

    def venv(d: str) -> bool:
        return Path(d) == venv_bin or (Path(d).parent / "pyvenv.cfg").exists()

    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not venv(d))
    found = shutil.which(tool, path=path)
    if found is None:
        raise FileNotFoundError(f"dcmtk's {tool} is not installed (Debian package dcmtk; ./run setup installs it)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) of a one-day self-signed certificate for localhost, made by openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
    subprocess.run([*command, "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    return cert, key


def listener_logs() -> list[str]:
    """The listener's logging set up as `logs.setup()` does, its lines also kept in the returned list as they
    are written (by any thread of this process), for a test to poll. Polling pytest's capfd instead loses
    lines: its read-then-truncate drops what another thread writes in between (seen under load, 6 in 75)."""
    from oncoplan.deploy.listener import logs
    from oncoplan.redact import CurrentStderr

    class Kept(CurrentStderr):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            try:
                self.lines.append(self.format(record))
            except Exception:
                self.handleError(record)
                return
            super().emit(record)

    logs.setup()
    installed, kept = logs.LOGGER.handlers[0], Kept()
    kept.setFormatter(installed.formatter)
    for f in installed.filters:  # one handler, as setup() makes: its capture filters run once a record
        kept.addFilter(f)
    for name in (logs.LOGGER.name, *logs.LIBRARIES):
        logging.getLogger(name).handlers[:] = [kept]
    return kept.lines


def log_events(lines: list[str]) -> list[dict]:
    """The JSON lines of `lines` (from listener_logs), parsed."""
    return [json.loads(line) for line in list(lines) if line.startswith("{")]


def listening_sockets(port: int) -> int:
    """How many sockets listen on `port` (each receiving process binds its own, SO_REUSEPORT): a readiness
    check that needs no log line."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def wait_for(check, timeout: float, what: str, interval: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Orthanc:
    """Debian's Orthanc as a plain process with its own storage, DICOM and HTTP ports."""

    def __init__(self, root: Path, aet: str = "ORTHANC") -> None:
        self.root, self.aet = root, aet
        self.port, self.http = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)
        (root / "orthanc.json").write_text(
            json.dumps(
                {
                    "Name": "oncoplan-test",
                    "StorageDirectory": str(root / "db"),
                    "IndexDirectory": str(root / "db"),
                    "DicomAet": aet,
                    "DicomPort": self.port,
                    "HttpPort": self.http,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "DicomCheckCalledAet": False,
                    "Plugins": [],
                    "StableAge": 3600,
                }
            )
        )

    def start(self) -> Orthanc:
        with open(self.root / "orthanc.log", "ab") as log:
            self.proc = subprocess.Popen([ORTHANC, str(self.root / "orthanc.json")], stdout=log, stderr=log)
        wait_for(lambda: self._alive(), 30, "Orthanc's REST API")
        return self

    def _alive(self) -> bool:
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=10) as r:
            return json.loads(r.read())

    def series(self) -> list[dict]:
        return self.get("/series?expand")

    def results(self, description: str = "RESULT") -> list[dict]:
        return [s for s in self.series() if s["MainDicomTags"].get("SeriesDescription", "").startswith(description)]


def make_study(folder: Path, seed: int, slices: int = 3, size: int = 16, patient: str = "Doe^Jane") -> list[Path]:
    """A small but complete CT series (one study), deterministic in `seed`."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(entropy_srcs=[str(seed), "study"]), generate_uid(entropy_srcs=[str(seed), "series"])
    pixels = np.random.default_rng(seed).integers(0, 1200, (slices, size, size), dtype=np.uint16)
    paths = []
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID = CTImageStorage, ExplicitVRLittleEndian
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(seed), "sop", str(k)])
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[str(seed), "for"])
        ds.PatientName, ds.PatientID, ds.Modality = patient, f"P{seed:05d}", "CT"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260101", "120000", f"A{seed}"
        ds.SeriesDescription, ds.StudyDescription, ds.SeriesNumber, ds.InstanceNumber = "Chest CT", "CT CHEST", 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 3.0 * k], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 3
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = pixels[k].tobytes()
        path = folder / f"{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def send(
    port: int, files: list[Path], calling: str = "SENDER", called: str = "ONCOPLAN", timeout_s: float | None = None
) -> list[int | None]:
    """C-STORE `files` over one association (pynetdicom): the status of each, None where none came.
    `timeout_s`: how long to wait for each response (pynetdicom's default 30 s when None; a peer that
    dies mid-store costs the sender that long)."""
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title=calling)
    if timeout_s is not None:
        ae.dimse_timeout = timeout_s
    contexts = {(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}
    ae.requested_contexts = [build_context(s, [t]) for s, t in sorted(contexts)]
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return [None] * len(files)
    # Stores as the listener's result sender makes them: each answered only by its own response, and safe from
    # pynetdicom's requestor reactor race (a response its reactor takes would make send_c_store wait out its
    # timeout). A response that answers another message counts as none (the association is then aborted).
    requestor = hand_responses_back(assoc)
    out = []
    for d in datasets:
        try:
            status = requestor.send_c_store(d) if assoc.is_established else None
        except WrongResponse:
            status = None
        out.append(getattr(status, "Status", None))
    if assoc.is_established:
        assoc.release()
    return out


def listener_config(folder: Path, port: int, orthanc: Orthanc, app_args: list[str] | None = None, **extra) -> Path:
    """A configuration with one route running tests/listener_app.py on CT studies."""
    config = {
        "ae_title": "ONCOPLAN",
        "host": "127.0.0.1",
        "port": port,
        "spool": str(folder / "spool"),
        "allowed_callers": ["SENDER", "STORESCU"],
        "quiet_period_s": 1.0,
        "poll_s": 0.1,
        "retry_backoff_s": 0.5,
        "max_backoff_s": 2.0,
        "min_free_mb": 0,
        "workers": 2,
        "destinations": {"pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.port}},
        "routes": [
            {
                "name": "echo",
                "command": [sys.executable, str(APP), "{input}", "{output}", *(app_args or [])],
                "match": {"Modality": "^CT$"},
                "destination": "pacs",
            }
        ],
    }
    config.update(extra)
    path = folder / "listener.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def with_route(config: Path, **route) -> Path:
    """The configuration file `config` with its one route changed by `route` (key -> value), rewritten."""
    raw = yaml.safe_load(config.read_text())
    raw["routes"] = [raw["routes"][0] | route]
    config.write_text(yaml.safe_dump(raw))
    return config


# The fast settings of the listener tests' TACE routes: the plumbing, not the plan.
TACE_SETTINGS = json.dumps({"beam": 1, "samples": 1, "steps": 2, "drug_horizon": 1, "embolic_horizon": 1})


def with_tace_route(config: Path, models: Path, *args: str) -> Path:
    """The configuration file `config` with its one route the TACE app's on CT studies (the bundles in
    `models`, TACE_SETTINGS, then `args`), rewritten."""
    raw = yaml.safe_load(config.read_text())
    raw["routes"] = [
        {
            "name": "tace",
            "app": "tace",
            "args": ["-m", str(models), "--settings", TACE_SETTINGS, *args],
            "match": {"Modality": "^CT$"},
            "destination": "pacs",
        }
    ]
    config.write_text(yaml.safe_dump(raw))
    return config


def send_and_wait_for_the_job(port: int, files: list[Path], lines: list[str], spool: Path, what: str) -> dict:
    """Sends `files` (every one stored), waits up to 300 s for the first job's end in the listener's
    `lines` (from listener_logs) and fails with the tail of the job's app.log unless it is done: its line."""
    statuses = send(port, files)
    assert set(statuses) == {0x0000}, statuses  # Success
    done = wait_for(lambda: [e for e in log_events(lines) if e["event"] in ("job_done", "job_failed")], 300, what)
    assert done[0]["event"] == "job_done", (spool / "jobs" / str(done[0]["job"]) / "app.log").read_text()[-3000:]
    return done[0]


class ListenerProcess:
    """`oncoplan listen` as its own process, so tests can kill -9 it."""

    def __init__(self, config: Path, port: int) -> None:
        self.config, self.port = config, port
        self.proc: subprocess.Popen | None = None
        self.log = config.parent / "listener.log"

    def start(self) -> ListenerProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "oncoplan", "listen", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                env=env,
                cwd=REPO,
            )
        wait_for(self._echo, 60, "the listener to answer C-ECHO")
        return self

    def _echo(self) -> bool:
        assert self.proc and self.proc.poll() is None, self.log.read_text()[-2000:]
        ae = AE(ae_title="SENDER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", self.port, ae_title="ONCOPLAN")
        ok = assoc.is_established and getattr(assoc.send_c_echo(), "Status", None) == 0
        if assoc.is_established:
            assoc.release()
        return ok

    def kill9(self) -> None:
        assert self.proc
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@contextmanager
def running(config_path: Path):
    """The listener of `config_path`, in this process, for the block."""
    from oncoplan.deploy.listener.config import load_config
    from oncoplan.deploy.listener.service import Listener

    listener = Listener(load_config(config_path))
    listener.start()
    try:
        yield listener
    finally:
        listener.stop()


def rows(spool: Path, sql: str) -> list[tuple]:
    """`sql` on the listener's state file."""
    import sqlite3

    with sqlite3.connect(spool / "queue.sqlite") as db:
        return db.execute(sql).fetchall()
