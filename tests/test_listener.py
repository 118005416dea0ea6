"""`oncoplan listen` against real parts: pynetdicom and dcmtk senders, a real Orthanc as the
PACS that receives the results, kill -9 of the listener, a destination that is down, a full disk."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pydicom
import pytest
import yaml
from pynetdicom import AE

from oncoplan.deploy.listener import logs
from oncoplan.deploy.listener.config import load_config
from oncoplan.errors import InputError

from .pacs import (
    ListenerProcess,
    Orthanc,
    dcmtk,
    free_port,
    listener_config,
    listener_logs,
    listening_sockets,
    log_events,
    make_study,
    running,
    self_signed_cert,
    send,
    wait_for,
    with_tace_route,
)

pytestmark = pytest.mark.integration

SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC210


def db_rows(spool: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(spool / "queue.sqlite") as db:
        return db.execute(sql).fetchall()


def job_states(spool: Path) -> dict[str, int]:
    return dict(db_rows(spool, "SELECT state, COUNT(*) FROM jobs GROUP BY state"))


# --- configuration -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ae_title": "THIS-AE-TITLE-IS-TOO-LONG"}, "ae_title"),
        ({"allowed_callers": []}, "allowed_callers"),
        ({"routes": [{"name": "x", "app": "nope", "destination": "pacs"}]}, "unknown app"),
        ({"routes": [{"name": "x", "app": "ctv", "destination": "elsewhere"}]}, "destination"),
        ({"routes": [{"name": "x", "command": ["true"], "destination": "pacs"}]}, "{input}"),
        (
            {"routes": [{"name": "x", "command": ["a", "{input}", "{output}"], "warm": True, "destination": "pacs"}]},
            "warm",
        ),
        ({"routes": [{"name": "x", "app": "ctv", "warm": "yes", "destination": "pacs"}]}, "warm must be"),
        ({"receivers": 0}, "receivers: a whole number"),
        ({"routes": [{"name": "x", "app": "ctv", "env": {"bad-name": "1"}, "destination": "pacs"}]}, "env"),
        ({"receivers": 2, "port": 0}, "fixed port"),
    ],
)
def test_bad_configuration_is_one_line_naming_the_file(tmp_path: Path, change: dict, message: str) -> None:
    good = {
        "spool": "spool",
        "allowed_callers": ["A"],
        "destinations": {"pacs": {"ae_title": "P", "host": "h", "port": 1}},
        "routes": [{"name": "ctv", "app": "ctv", "destination": "pacs"}],
    }
    path = tmp_path / "listener.yaml"
    path.write_text(yaml.safe_dump(good | change))
    with pytest.raises(InputError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    proc = subprocess.run(
        [sys.executable, "-m", "oncoplan", "listen", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# --- association and bad input -------------------------------------------------------------
def test_unknown_caller_is_refused_and_bad_instances_are_quarantined(tmp_path: Path, orthanc: Orthanc) -> None:
    port = free_port()
    config = listener_config(tmp_path, port, orthanc)
    spool = tmp_path / "spool"
    study = make_study(tmp_path / "s", seed=11)
    with running(config):
        assert send(port, study[:1], calling="INTRUDER") == [None]  # association rejected
        # A truncated file, sent as it is on disk, and a dataset whose pixel data is short.
        truncated = tmp_path / "truncated.dcm"
        truncated.write_bytes(study[1].read_bytes()[:-200])
        short = pydicom.dcmread(study[2])
        short.PixelData = short.PixelData[:100]
        short.save_as(tmp_path / "short.dcm")
        assert send(port, [truncated, tmp_path / "short.dcm"]) == [CANNOT_UNDERSTAND, CANNOT_UNDERSTAND]
        reasons = sorted(p.read_text() for p in (spool / "quarantine").glob("*.txt"))
        assert len(reasons) == 2 and all("from SENDER" in r and "truncated" in r for r in reasons), reasons
        assert db_rows(spool, "SELECT COUNT(*) FROM instances") == [(0,)]

        # A non-image instance (Basic Text SR) alone: stored, but no route wants its study.
        sr = pydicom.dcmread(study[0])
        sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
        sr.Modality, sr.StudyInstanceUID = "SR", "1.2.3.4.5.6.7.8.9"
        for tag in (
            "PixelData",
            "Rows",
            "Columns",
            "BitsAllocated",
            "BitsStored",
            "HighBit",
            "PixelRepresentation",
            "SamplesPerPixel",
            "PhotometricInterpretation",
            "RescaleIntercept",
            "RescaleSlope",
        ):
            delattr(sr, tag)
        sr.save_as(tmp_path / "sr.dcm")
        assert send(port, [tmp_path / "sr.dcm"]) == [SUCCESS]
        wait_for(lambda: db_rows(spool, "SELECT state FROM studies") == [("complete",)], 20, "the SR study to close")
        assert job_states(spool) == {}


@contextmanager
def locked_state_file(spool: Path, seconds: float):
    """Another process's write transaction on the listener's state file, held for `seconds`."""
    blocker = sqlite3.connect(spool / "queue.sqlite", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    release = threading.Timer(seconds, lambda: blocker.execute("COMMIT"))
    release.start()
    try:
        yield
    finally:
        release.join()
        blocker.close()


def _events(capfd: pytest.CaptureFixture) -> list[dict]:
    return [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]


def test_a_stalled_store_is_logged_with_where_the_time_went(
    tmp_path: Path, orthanc: Orthanc, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state file's write lock held elsewhere for 1.5 s: the instance is still acknowledged, and
    `store_slow` says the time went to recording it, not to writing the file."""
    from oncoplan.deploy.listener import scp

    monkeypatch.setattr(scp, "SLOW_STORE_S", 1.0)
    port = free_port()
    config = listener_config(tmp_path, port, orthanc)
    study = make_study(tmp_path / "s", seed=12, slices=1)
    logs.setup()
    with running(config), locked_state_file(tmp_path / "spool", 1.5):
        assert send(port, study) == [SUCCESS]
    slow = [e for e in _events(capfd) if e["event"] == "store_slow"]
    assert len(slow) == 1 and slow[0]["caller"] == "SENDER", slow
    assert slow[0]["record_s"] >= 1.0 > slow[0]["write_s"]


def test_a_state_file_locked_past_its_timeout_stops_no_loop(
    tmp_path: Path, orthanc: Orthanc, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Locked for 4 s with a 0.5 s busy timeout: an instance arriving then is refused (0xA700, logged
    `record_failed`), and the job workers meet "database is locked" each time they look for a job. They
    log `loop_error` and go on (a loop thread that died of it stopped its concern for good, silently: so
    it was before): a study sent afterwards is completed, run and delivered."""
    from oncoplan.deploy.listener import queue

    monkeypatch.setattr(queue, "BUSY_TIMEOUT_S", 0.5)
    port = free_port()
    config = listener_config(tmp_path, port, orthanc)
    study = make_study(tmp_path / "s", seed=13)
    before = len(orthanc.results())
    logs.setup()
    with running(config):
        with locked_state_file(tmp_path / "spool", 4.0):
            # An instance that cannot be recorded is refused as out of resources (the sender may resend).
            assert send(port, study[:1]) == [OUT_OF_RESOURCES]
        events = _events(capfd)
        assert any(e["event"] == "record_failed" and "locked" in e["error"] for e in events)
        errors = {e["loop"] for e in events if e["event"] == "loop_error"}
        assert "worker-0" in errors, errors  # claiming a job writes; completion and delivery only read till now
        assert {"complete", "deliver", "clean-up", "worker-0"} <= {t.name for t in threading.enumerate()}
        assert send(port, study) == [SUCCESS] * 3
        wait_for(lambda: len(orthanc.results()) == before + 1, 60, "the result of a study sent after the lock")


def test_a_job_done_while_the_state_file_is_locked_is_recorded_when_it_frees(
    tmp_path: Path, orthanc: Orthanc, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process takes the state file's write lock for 3 s (busy timeout 0.5 s) just as a job's
    app has finished: the worker retries (`record_retry`) and the job is recorded done and its result
    delivered, once. Before, the error went up to the worker loop: the job stayed `running` and its
    result unsent until the listener restarted, which then ran the job again."""
    from oncoplan.deploy.listener import queue

    monkeypatch.setattr(queue, "BUSY_TIMEOUT_S", 0.5)
    spool = tmp_path / "spool"
    finish_job, locks, locked = queue.JobQueue.finish_job, ExitStack(), []

    def locked_first(self: queue.JobQueue, *args: object) -> None:
        if not locked:  # the first job to finish meets the lock
            locked.append(locks.enter_context(locked_state_file(spool, 3.0)))
        finish_job(self, *args)

    monkeypatch.setattr(queue.JobQueue, "finish_job", locked_first)
    port = free_port()
    config = listener_config(tmp_path, port, orthanc)
    study = make_study(tmp_path / "s", seed=14)
    before = len(orthanc.results())
    logs.setup()
    with locks, running(config):
        assert send(port, study) == [SUCCESS] * 3
        wait_for(lambda: job_states(spool) == {"done": 1}, 60, "the job to be recorded done")
        wait_for(lambda: len(orthanc.results()) == before + 1, 60, "the job's result in the PACS")
    retries = [e for e in _events(capfd) if e["event"] == "record_retry"]
    assert retries and {e["what"] for e in retries} == {"job_done"}, retries
    assert len(orthanc.results()) == before + 1


# --- the normal path, the real Orthanc, the health endpoint --------------------------------
def test_storescu_studies_reach_orthanc_once_with_metrics_and_clean_logs(
    tmp_path: Path, orthanc: Orthanc, capfd: pytest.CaptureFixture
) -> None:
    port, health = free_port(), free_port()
    config = listener_config(tmp_path, port, orthanc, health={"port": health})
    studies = [make_study(tmp_path / f"s{i}", seed=100 + i) for i in range(2)]
    before = len(orthanc.results())
    logs.setup()
    with running(config):
        # Both studies in ONE association, sent by dcmtk's storescu.
        files = [str(p) for s in studies for p in s]
        subprocess.run(
            [dcmtk("storescu"), "-aet", "STORESCU", "-aec", "ONCOPLAN", "127.0.0.1", str(port), *files],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(lambda: len(orthanc.results()) == before + 2, 60, "two results in Orthanc")

        def read_status() -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/status", timeout=10) as r:
                return json.loads(r.read())

        # Orthanc holds a result before its C-STORE response reaches the listener, which marks the
        # delivery sent only then: wait for that, not just for Orthanc.
        wait_for(lambda: read_status()["counts"]["deliveries"] == {"sent": 2}, 30, "both deliveries marked sent")
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        status = read_status()
    assert 'oncoplan_jobs{state="done"} 2' in metrics and "oncoplan_instances_received 6" in metrics
    assert status["counts"]["deliveries"] == {"sent": 2} and "job_run_s_median" in status["latency"]
    err = capfd.readouterr().err
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert events.count("job_done") == 2 and events.count("result_sent") == 2
    uids = {str(pydicom.dcmread(s[0]).StudyInstanceUID) for s in studies}
    assert "Doe^Jane" not in err and not any(u in err for u in uids), "a patient identifier reached the log"


def test_a_failing_app_is_retried_then_succeeds(tmp_path: Path, orthanc: Orthanc) -> None:
    port = free_port()
    config = listener_config(tmp_path, port, orthanc, app_args=["--fail-once", str(tmp_path / "failed-once")])
    study = make_study(tmp_path / "s", seed=300)
    before = len(orthanc.results())
    with running(config):
        assert send(port, study) == [SUCCESS] * 3
        wait_for(lambda: len(orthanc.results()) == before + 1, 60, "the result after one retry")
    assert db_rows(tmp_path / "spool", "SELECT state, attempts FROM jobs") == [("done", 2)]


# --- load ------------------------------------------------------------------------------------
def test_receiving_processes_share_the_port_and_one_killed_is_started_again(
    tmp_path: Path, orthanc: Orthanc, capfd: pytest.CaptureFixture
) -> None:
    port = free_port()
    config = listener_config(tmp_path, port, orthanc, receivers=3)
    studies = [make_study(tmp_path / f"s{i}", seed=2000 + i, slices=2) for i in range(12)]
    before = len(orthanc.results())
    # Readiness is read off the sockets, and the log once the processes are gone: polling pytest's capture
    # while they write loses lines (its read-then-truncate drops what is written in between).
    logs.setup()
    with running(config) as listener:
        wait_for(lambda: listening_sockets(port) == 3, 60, "two more receiving processes listening")
        with ThreadPoolExecutor(12) as pool:  # twelve associations at once
            # 120 s per response: the test judges what arrives and where, not how fast; a response
            # once took over 30 s (pynetdicom's default) on a CI run with a model export beside it.
            statuses = list(pool.map(lambda study: send(port, study, timeout_s=120), studies))
        assert all(s == [SUCCESS, SUCCESS] for s in statuses)
        pids = listener.status()["receiver_pids"]
        os.kill(pids[1], signal.SIGKILL)
        wait_for(
            lambda: listener.status()["receiver_pids"][1] != pids[1] and listening_sockets(port) == 3,
            60,
            "the killed receiver started again and listening",
        )
        assert send(port, make_study(tmp_path / "late", seed=2100, slices=2)) == [SUCCESS, SUCCESS]
        wait_for(lambda: len(orthanc.results()) == before + 13, 120, "13 results in Orthanc", interval=1)
    logged = _events(capfd)
    accepted = [e for e in logged if e["event"] == "association_accepted"]
    assert len(accepted) == 13
    assert len({e["receiver"] for e in accepted}) >= 2  # the kernel spread them (all in one: p = 3^-11)
    assert sum(e["event"] == "receiver_started" for e in logged) == 3
    assert sum(e["event"] == "receiver_died" for e in logged) == 1
    spool = tmp_path / "spool"
    assert db_rows(spool, "SELECT COUNT(*) FROM instances") == [(26,)]
    assert job_states(spool) == {"done": 13}


def test_eight_concurrent_senders_of_ten_studies_each(tmp_path: Path, orthanc: Orthanc) -> None:
    port = free_port()
    ledger = tmp_path / "ledger.txt"
    config = listener_config(tmp_path, port, orthanc, app_args=["--ledger", str(ledger)])
    studies = [make_study(tmp_path / f"s{i}", seed=1000 + i, slices=2) for i in range(80)]
    before = len(orthanc.results())
    with running(config):

        def sender(k: int) -> list:
            return [send(port, studies[k * 10 + j]) for j in range(10)]

        with ThreadPoolExecutor(8) as pool:
            statuses = [s for batch in pool.map(sender, range(8)) for s in batch]
        assert all(s == [SUCCESS, SUCCESS] for s in statuses)
        wait_for(lambda: len(orthanc.results()) == before + 80, 240, "80 results in Orthanc", interval=1)
    spool = tmp_path / "spool"
    assert db_rows(spool, "SELECT COUNT(*) FROM instances") == [(160,)]
    assert job_states(spool) == {"done": 80}
    done = ledger.read_text().split()
    assert len(done) == 80 == len(set(done)), "a study was processed twice"


# --- faults ----------------------------------------------------------------------------------
def test_kill_9_while_receiving_and_while_running_loses_nothing_and_repeats_nothing(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    port = free_port()
    ledger = tmp_path / "ledger.txt"
    config = listener_config(tmp_path, port, orthanc, app_args=["--sleep", "3", "--ledger", str(ledger)], workers=1)
    spool = tmp_path / "spool"
    first, big = make_study(tmp_path / "a", seed=500), make_study(tmp_path / "b", seed=501, slices=60, size=64)
    before = len(orthanc.results())
    listener = ListenerProcess(config, port).start()
    try:
        assert send(port, first) == [SUCCESS] * 3
        wait_for(lambda: job_states(spool).get("running"), 30, "the job to run")
        listener.kill9()  # while the job runs (its app dies with the listener)

        listener.start()
        result: list = []
        t = threading.Thread(target=lambda: result.append(send(port, big)))
        t.start()
        wait_for(lambda: db_rows(spool, "SELECT COUNT(*) FROM instances")[0][0] >= 4 + 3, 30, "some of the big study")
        listener.kill9()  # while the big study is arriving
        t.join(timeout=60)
        assert None in result[0] or result[0].count(SUCCESS) < 60  # the sender saw the failure

        listener.start()
        assert send(port, big) == [SUCCESS] * 60  # what a sender does after a failed association
        wait_for(lambda: len(orthanc.results()) == before + 2, 120, "both results in Orthanc", interval=0.5)
    finally:
        listener.stop()
    assert sorted(ledger.read_text().split()) == sorted(
        {str(pydicom.dcmread(s[0]).StudyInstanceUID) for s in (first, big)}
    ), "processed twice or never"
    assert db_rows(spool, "SELECT COUNT(*) FROM instances") == [(63,)]
    assert sorted(db_rows(spool, "SELECT inputs FROM jobs WHERE state = 'done'")) == [(3,), (60,)]
    assert not list(spool.rglob("*.partial")), "a torn file was left in the spool"
    for (path,) in db_rows(spool, "SELECT path FROM instances"):
        pydicom.dcmread(path).pixel_array  # every acknowledged instance reads whole  # noqa: B018


def test_a_child_that_outlived_its_parent_before_asking_to_die_with_it_leaves_at_once(tmp_path: Path) -> None:
    """The fork-to-prctl window: a parent killed there sends no death signal ever, and the app would
    finish a job the restarted listener runs again (a CI run once saw a study processed twice). A child
    whose parent is not the one that started it (here: told another pid) exits before running anything."""
    from functools import partial

    from oncoplan.deploy.listener.processes import ORPHANED, die_with_parent

    marker = tmp_path / "ran"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    orphan = subprocess.run(command, preexec_fn=partial(die_with_parent, 0), check=False)  # pid 0: nobody's parent
    assert orphan.returncode == ORPHANED and not marker.exists()
    child = subprocess.run(command, preexec_fn=partial(die_with_parent, os.getpid()), check=False)
    assert child.returncode == 0 and marker.exists()


def test_results_wait_for_a_destination_that_is_down(tmp_path: Path) -> None:
    pacs = Orthanc(tmp_path / "orthanc-late")  # configured, not yet running
    port = free_port()
    config = listener_config(tmp_path, port, pacs)
    spool = tmp_path / "spool"
    with running(config):
        assert send(port, make_study(tmp_path / "s", seed=600)) == [SUCCESS] * 3
        wait_for(
            lambda: (db_rows(spool, "SELECT MAX(attempts) FROM deliveries")[0][0] or 0) >= 3,
            60,
            "three failed delivery attempts",
        )
        assert db_rows(spool, "SELECT state FROM deliveries") == [("pending",)]
        pacs.start()
        try:
            wait_for(lambda: len(pacs.results()) == 1, 60, "the result once the destination is up")
            # The PACS holds it before its response reaches the listener, which records it then.
            wait_for(lambda: db_rows(spool, "SELECT state FROM deliveries") == [("sent",)], 30, "the delivery recorded")
        finally:
            pacs.stop()


def test_a_full_spool_refuses_with_out_of_resources_and_keeps_no_torn_file(tmp_path: Path, orthanc: Orthanc) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(spool)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    port = free_port()
    try:
        config = listener_config(tmp_path, port, orthanc)
        study = make_study(tmp_path / "s", seed=700, slices=12, size=256)  # 12 x 128 KB > 1 MB
        with running(config):
            statuses = send(port, study)
            assert statuses[0] == SUCCESS and OUT_OF_RESOURCES in statuses, statuses
            assert None not in statuses  # refused instance by instance, the association stayed up
            stored = db_rows(spool, "SELECT path FROM instances")
            assert len(stored) == statuses.count(SUCCESS)
            for (path,) in stored:
                pydicom.dcmread(path).pixel_array  # noqa: B018
            assert not list(spool.rglob("*.partial"))
            assert send(port, study[:1]) == [None]  # a new association is refused while the spool is full
    finally:
        subprocess.run(["umount", "--lazy", str(spool)], check=False)  # busy until the last handle closes


def test_reserve_of_free_space_refuses_before_the_disk_is_full(tmp_path: Path, orthanc: Orthanc) -> None:
    port = free_port()
    free_mb = shutil.disk_usage(tmp_path).free / 2**20
    config = listener_config(tmp_path, port, orthanc, min_free_mb=free_mb * 2)
    with running(config):
        assert send(port, make_study(tmp_path / "s", seed=800)) == [None] * 3  # association refused


def test_tls_association(tmp_path: Path, orthanc: Orthanc) -> None:
    import ssl

    cert, key = self_signed_cert(tmp_path)
    port = free_port()
    config = listener_config(tmp_path, port, orthanc, tls={"cert": str(cert), "key": str(key)})
    with running(config):
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ae = AE(ae_title="SENDER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="ONCOPLAN", tls_args=(ctx, "localhost"))
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
        plain = ae.associate("127.0.0.1", port, ae_title="ONCOPLAN")
        assert not plain.is_established


# --- a real app behind the listener ----------------------------------------------------------
def test_ctv_route_runs_the_contouring_app_and_orthanc_holds_rtstruct_and_seg(tmp_path: Path, orthanc: Orthanc) -> None:
    """Two breast CT studies and their notes (text SRs) arrive over DICOM; the CTV app's RTSTRUCT
    and SEG land in Orthanc, each in its own study, both contoured by one warm app worker."""
    from oncoplan.training.synth.cohort import generate_cohort

    from .helpers import cohort_rows, text_sr

    cohort = generate_cohort("breast", tmp_path / "c", 2, seed=61, size="small", progress=False)
    files, studies = [], set()
    for i, row in enumerate(cohort_rows(cohort)):
        ct = sorted((cohort / row["image_dir"]).glob("*.dcm"))
        text_sr(pydicom.dcmread(ct[0]), row["note"]).save_as(tmp_path / f"note{i}.dcm")
        files += [*ct, tmp_path / f"note{i}.dcm"]
        studies.add(str(pydicom.dcmread(ct[0]).StudyInstanceUID))
    port = free_port()
    config = listener_config(tmp_path, port, orthanc)
    raw = yaml.safe_load(config.read_text())
    raw["routes"] = [{"name": "ctv", "app": "ctv", "match": {"Modality": "^CT$"}, "destination": "pacs"}]
    raw["workers"] = 1
    config.write_text(yaml.safe_dump(raw))
    with running(config):
        assert set(send(port, files)) == {SUCCESS}

        def written() -> dict[str, set[str]]:
            found: dict[str, set[str]] = {uid: set() for uid in studies}
            for s in orthanc.series():
                uid = orthanc.get(f"/studies/{s['ParentStudy']}")["MainDicomTags"]["StudyInstanceUID"]
                if uid in found:
                    found[uid].add(s["MainDicomTags"].get("Modality"))
            return found

        wait_for(
            lambda: all({"RTSTRUCT", "SEG"} <= m for m in written().values()),
            300,
            "RTSTRUCT and SEG of both studies in Orthanc",
            interval=1,
        )
    assert job_states(tmp_path / "spool") == {"done": 2}
    (log,) = (tmp_path / "spool" / "warm").glob("ctv-*.log")
    assert log.read_text().count("warm worker") == 1  # one process served both studies


def test_tace_route_delivers_sr_seg_and_encapsulated_pdf(tmp_path: Path, orthanc: Orthanc) -> None:
    """A pre-treatment liver study (arterial and portal-venous series) arrives; the planning app
    (tiny random-weight bundles: the plumbing, not the plan) answers with SR, SEG and PDF in Orthanc."""
    from oncoplan.training.synth.cohort import generate_cohort

    from .helpers import cohort_rows, tiny_tace_models

    models = tiny_tace_models(tmp_path / "models")
    cohort = generate_cohort("liver", tmp_path / "c", 1, seed=62, size="small", progress=False)
    pre = sorted((cohort / cohort_rows(cohort)[0]["TCIA_ID"] / "dicom" / "pre").rglob("*.dcm"))
    port = free_port()
    config = with_tace_route(listener_config(tmp_path, port, orthanc), models)
    study_uid = str(pydicom.dcmread(pre[0]).StudyInstanceUID)
    with running(config):
        assert set(send(port, pre)) == {SUCCESS}

        def written() -> set[str]:
            return {
                s["MainDicomTags"].get("Modality")
                for s in orthanc.series()
                if orthanc.get(f"/studies/{s['ParentStudy']}")["MainDicomTags"]["StudyInstanceUID"] == study_uid
            }

        wait_for(lambda: {"SR", "SEG", "DOC"} <= written(), 300, "SR, SEG and PDF in Orthanc", interval=1)
    assert job_states(tmp_path / "spool") == {"done": 1}


# --- the result sender and pynetdicom's requestor reactor race -------------------------------------------
@contextmanager
def ct_scp(port: int, stored):
    """A real pynetdicom Storage SCP for CT on loopback whose C-STORE handler is `stored`."""
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
    from pynetdicom import evt

    scp = AE(ae_title="PACS")
    scp.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, stored)])
    try:
        yield
    finally:
        server.shutdown()


def ct_association(port: int):
    """An established requestor association from SENDER to the CT storage SCP on `port`."""
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    ae = AE(ae_title="SENDER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    return assoc


@contextmanager
def storage_scp(port: int, received: list):
    """A real pynetdicom Storage SCP on loopback that answers every C-STORE with success."""

    def stored(event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return SUCCESS

    with ct_scp(port, stored):
        yield


def reactor_takes_each_response(assoc) -> None:
    """Force the race on `assoc`: whenever send_c_store waits for its response, the reactor's side takes it
    off the DIMSE queue first and hands it to `_serve_request`, as pynetdicom 3.0.4's reactor does when it
    runs while send_c_store believes it paused."""
    real_get = assoc.dimse.get_msg

    def get_msg(block: bool = False):
        if block:
            context_id, msg = real_get(block=True)
            if msg is not None:
                assoc._serve_request(msg, context_id)
        return real_get(block=block)

    assoc.dimse.get_msg = get_msg


def test_a_store_response_the_requestors_reactor_takes_reaches_send_c_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
    from pynetdicom.dimse_messages import C_STORE_RSP
    from pynetdicom.dimse_primitives import C_STORE

    from oncoplan.deploy.listener import sender
    from oncoplan.deploy.listener.config import Peer
    from oncoplan.deploy.listener.requestor import hand_responses_back

    files = make_study(tmp_path / "study", seed=91, slices=2)
    port, received = free_port(), []
    with storage_scp(port, received):
        # A C-STORE-RSP, decoded from its DIMSE message as the reactor gets it, handed to `_serve_request`
        # as the reactor does, lands on the queue that send_c_store reads.
        assoc = ct_association(port)
        try:
            requestor = hand_responses_back(assoc)
            requestor.awaited = 1  # as while its send_c_store waits for the answer to its store, message 1
            rsp = C_STORE()
            rsp.MessageIDBeingRespondedTo, rsp.Status = 1, SUCCESS
            rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID = CTImageStorage, "1.2.826.0.1.3680043.8.498.1"
            message = C_STORE_RSP()
            message.primitive_to_message(rsp)
            taken = message.message_to_primitive()
            context_id = assoc.accepted_contexts[0].context_id
            assert assoc.dimse.msg_queue.empty()
            assoc._serve_request(taken, context_id)
            assert assoc.dimse.msg_queue.get_nowait() == (context_id, taken)
            requestor.awaited = None
        finally:
            assoc.release()

        # Control: without the workaround pynetdicom drops the response the reactor took, and send_c_store
        # waits out its DIMSE timeout and aborts (the race this guards against).
        ae = AE(ae_title="SENDER")
        ae.dimse_timeout = 1
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
        reactor_takes_each_response(assoc)
        assert "Status" not in assoc.send_c_store(pydicom.dcmread(files[0]))
        assert assoc.is_aborted
        received.clear()

        # The production sender, its associations' reactors taking every response: each file is acknowledged
        # (without its workaround each would wait out the timeout and fail).
        class RacingAE(AE):
            def associate(self, *args, **kwargs):
                assoc = super().associate(*args, **kwargs)
                reactor_takes_each_response(assoc)
                return assoc

        monkeypatch.setattr(sender, "AE", RacingAE)
        outcome = sender.send(Peer("PACS", "127.0.0.1", port), "ONCOPLAN", files, timeout_s=3)
    assert outcome == {f: None for f in files}
    assert received == [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]


@contextmanager
def confused_scp(port: int, received: list):
    """A real pynetdicom Storage SCP that, as a confused PACS might, stores the first instance of each
    association but answers each later one first with a late Success to the previous request (its Message ID
    Being Responded To that request's Message ID), then, 0.3 s later, with its real answer: Out of Resources,
    not stored."""
    from pynetdicom.dimse_primitives import C_STORE

    previous: dict[int, int] = {}  # id(association) -> the Message ID of its last C-STORE request

    def stored(event) -> int:
        request, before = event.request, previous.get(id(event.assoc))
        previous[id(event.assoc)] = request.MessageID
        if before is None:
            received.append(str(request.AffectedSOPInstanceUID))
            return SUCCESS
        late = C_STORE()
        late.MessageIDBeingRespondedTo, late.Status = before, SUCCESS
        late.AffectedSOPClassUID, late.AffectedSOPInstanceUID = request.AffectedSOPClassUID, "1.2.3.4"
        event.assoc.dimse.send_msg(late, event.context.context_id)
        time.sleep(0.3)  # the late one is taken (and, in the reactor case, dealt with) before the real answer
        return OUT_OF_RESOURCES

    with ct_scp(port, stored):
        yield


@pytest.mark.parametrize("reactor_takes", [True, False], ids=["reactor_takes_it", "send_c_store_reads_it"])
def test_a_stale_store_response_is_never_taken_as_the_answer_to_the_store_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reactor_takes: bool
) -> None:
    """A late or unrequested C-STORE-RSP (a Success for another message) never acknowledges the store in flight:
    taken by the requestor's reactor it is dropped with one log line, not handed to send_c_store; read by
    send_c_store it fails that store. Either way the file the destination refused is not marked delivered."""
    from pynetdicom.dimse_primitives import C_STORE

    from oncoplan.deploy.listener import sender
    from oncoplan.deploy.listener.config import Peer
    from oncoplan.deploy.listener.requestor import hand_responses_back

    lines = listener_logs()
    files = make_study(tmp_path / "study", seed=92, slices=2)
    port, received = free_port(), []
    with confused_scp(port, received):

        class RacingAE(AE):
            def associate(self, *args, **kwargs):
                assoc = super().associate(*args, **kwargs)
                if reactor_takes:
                    reactor_takes_each_response(assoc)
                return assoc

        monkeypatch.setattr(sender, "AE", RacingAE)
        outcome = sender.send(Peer("PACS", "127.0.0.1", port), "ONCOPLAN", files, timeout_s=3)
        monkeypatch.undo()
        first, second = (str(pydicom.dcmread(f).SOPInstanceUID) for f in files)
        assert received == [first]
        assert outcome[files[0]] is None
        assert outcome[files[1]] is not None and not outcome[files[1]].final  # not delivered; retried

        # Below the sender: what the reactor takes is handed back only if it answers the store in flight.
        assoc = ct_association(port)
        try:
            requestor = hand_responses_back(assoc)
            context_id = assoc.accepted_contexts[0].context_id
            for awaited in (None, 2):
                stale = C_STORE()
                stale.MessageIDBeingRespondedTo, stale.Status = 7, SUCCESS
                requestor.awaited = awaited
                assoc._serve_request(stale, context_id)
                assert assoc.dimse.msg_queue.empty()
            requestor.awaited = None
        finally:
            assoc.release()

    events = log_events(lines)
    dropped = [(e["responding_to"], e["awaiting"]) for e in events if e["event"] == "dicom_response_dropped"]
    assert {e["message"] for e in events if e["event"] == "dicom_response_dropped"} == {"C-STORE-RSP"}
    assert [d for d in dropped if d[0] == 7] == [(7, None), (7, 2)]
    if reactor_takes or (1, 2) in dropped:  # (also where pynetdicom's own reactor race took it)
        # Dropped with one line; send_c_store read the real answer.
        assert [d for d in dropped if d[0] == 1] == [(1, 2)]
        assert outcome[files[1]].reason == f"status 0x{OUT_OF_RESOURCES:04X}"
    else:  # send_c_store read it: that store fails, and its association is aborted
        assert outcome[files[1]].reason == (
            "WrongResponse: the C-STORE response of the destination answers message 1, not message 2 of this store: "
            "not acknowledged (association aborted)"
        )
    assert not any(uid in line for line in lines for uid in (first, second, "1.2.3.4"))


def test_the_requestor_workaround_fails_loudly_if_pynetdicom_drops_what_it_relies_on() -> None:
    import queue
    from types import SimpleNamespace

    from oncoplan.deploy.listener.requestor import PynetdicomChanged, check_pynetdicom, hand_responses_back

    check_pynetdicom()  # the installed pynetdicom has it
    with pytest.raises(PynetdicomChanged, match=r"Association\._serve_request.*requestor reactor race"):
        check_pynetdicom(type("Association", (), {}))
    with pytest.raises(PynetdicomChanged, match=r"Association\._serve_request"):
        hand_responses_back(SimpleNamespace(dimse=SimpleNamespace(msg_queue=queue.Queue())))
    with pytest.raises(PynetdicomChanged, match=r"DIMSEServiceProvider\.msg_queue"):
        hand_responses_back(SimpleNamespace(_serve_request=lambda msg, context_id: None, dimse=SimpleNamespace()))
    no_get_msg = SimpleNamespace(msg_queue=queue.Queue())
    with pytest.raises(PynetdicomChanged, match=r"DIMSEServiceProvider\.get_msg"):
        hand_responses_back(SimpleNamespace(_serve_request=lambda msg, context_id: None, dimse=no_get_msg))
    # At import: the listener's result sender does not even load.
    drop = "import pynetdicom.association as a; del a.Association._serve_request; "
    run = subprocess.run(
        [sys.executable, "-c", drop + "import oncoplan.deploy.listener.sender"], capture_output=True, text=True
    )
    assert run.returncode != 0
    assert "PynetdicomChanged: pynetdicom" in run.stderr and "has no Association._serve_request" in run.stderr
