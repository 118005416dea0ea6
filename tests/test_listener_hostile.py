"""The listener as a hospital gateway, against what a sloppy or hostile network sends: one patient per
job, no partial studies, no denial of service, exactly once for every route (a real Orthanc receives
the results; senders are pynetdicom, dcmtk's storescu and raw sockets)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEGLosslessSV1, generate_uid
from pynetdicom import AE

from oncoplan.deploy.listener import logs
from oncoplan.deploy.listener.spool import Spool

from .pacs import (
    APP,
    ListenerProcess,
    Orthanc,
    dcmtk,
    free_port,
    listener_config,
    listener_logs,
    log_events,
    make_study,
    rows,
    running,
    self_signed_cert,
    send,
    wait_for,
    with_route,
)

pytestmark = pytest.mark.integration

SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND, INVALID_UID, CONFLICT = 0x0000, 0xA700, 0xC210, 0xC212, 0xC213


def rewrite(files: list[Path], folder: Path, new_sop: bool = True, **changes) -> list[Path]:
    """Copies of `files` with `changes` (keyword -> value) and, by default, new SOP Instance UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        if new_sop:
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"{i:03d}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


# --- one patient per job ------------------------------------------------------------------------
def test_another_patients_instances_reusing_a_series_or_study_uid_are_refused_and_never_mixed_in(
    tmp_path: Path, orthanc: Orthanc, capfd: pytest.CaptureFixture
) -> None:
    """Bob's instances carry Alice's SeriesInstanceUID (a sloppy anonymiser), or Alice's StudyInstanceUID:
    refused (0xC213) and quarantined with the reason, counted; Alice's job sees her 3 instances only."""
    port, spool = free_port(), tmp_path / "spool"
    config = listener_config(tmp_path, port, orthanc)
    alice = make_study(tmp_path / "alice", seed=3000, patient="Alice^Anna")
    bob = make_study(tmp_path / "bob", seed=3001, slices=2, patient="Bob^Bert")
    first = pydicom.dcmread(alice[0])
    bob_in_alices_series = rewrite(bob, tmp_path / "b1", SeriesInstanceUID=first.SeriesInstanceUID)
    bob_in_alices_study = rewrite(bob[:1], tmp_path / "b2", StudyInstanceUID=first.StudyInstanceUID)
    before = len(orthanc.results())
    logs.setup()
    with running(config) as listener:
        assert send(port, alice) == [SUCCESS] * 3
        assert send(port, bob_in_alices_series) == [CONFLICT] * 2
        assert send(port, bob_in_alices_study) == [CONFLICT]
        wait_for(lambda: len(orthanc.results()) == before + 1, 60, "Alice's result")
        counted = listener.status()["counts"]["events"]
    assert rows(spool, "SELECT inputs, state FROM jobs") == [(3, "done")]
    (job_dir,) = (spool / "jobs").iterdir()
    result = pydicom.dcmread(job_dir / "output" / "result.dcm")
    assert result.ImageComments == "3 CT instances received" and result.PatientName == "Alice^Anna"
    reasons = sorted(p.read_text() for p in (spool / "quarantine").glob("*.txt"))
    assert sum("Series Instance UID already held in another study" in r for r in reasons) == 2, reasons
    assert sum("patient" in r for r in reasons) == 1, reasons
    assert counted["instances_conflicting"] == 3
    err = capfd.readouterr().err
    assert err.count('"event": "conflict"') == 3
    assert not any(name in err for name in ("Alice", "Bob", "P03000", "P03001", str(first.StudyInstanceUID)))


@pytest.mark.parametrize("bob_id", ["", "P03000"], ids=["both-without-patient-id", "another-patient-under-alices-id"])
def test_another_patient_in_the_study_is_refused_even_without_or_with_the_same_patient_id(
    tmp_path: Path, orthanc: Orthanc, bob_id: str
) -> None:
    """A blank PatientID (both patients), or Alice's ID on Bob's instances: the name and birth date differ,
    so Bob's instance in Alice's study is a conflict, not one of Alice's (it was mixed into her job)."""
    port, spool = free_port(), tmp_path / "spool"
    alice = rewrite(make_study(tmp_path / "a", seed=3010, patient="Alice^Anna"), tmp_path / "alice", PatientID="")
    if bob_id:
        alice = rewrite(alice, tmp_path / "alice2", new_sop=False, PatientID=bob_id)
    first = pydicom.dcmread(alice[0])
    bob = rewrite(
        make_study(tmp_path / "b", seed=3011, slices=1, patient="Bob^Bert"),
        tmp_path / "bob",
        PatientID=bob_id,
        PatientBirthDate="19500101",
        StudyInstanceUID=first.StudyInstanceUID,
    )
    with running(listener_config(tmp_path, port, orthanc)):
        assert send(port, alice) == [SUCCESS] * 3
        assert send(port, bob) == [CONFLICT]
        wait_for(lambda: rows(spool, "SELECT state FROM jobs") == [("done",)], 60, "Alice's job")
    assert rows(spool, "SELECT inputs FROM jobs") == [(3,)]


def test_a_sop_instance_resent_with_other_content_or_elsewhere_is_refused_and_the_stored_one_kept(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    port, spool = free_port(), tmp_path / "spool"
    config = listener_config(tmp_path, port, orthanc, quiet_period_s=30)
    study = make_study(tmp_path / "s", seed=3100)
    original = pydicom.dcmread(study[0]).pixel_array.copy()
    changed = rewrite(study[:1], tmp_path / "changed", new_sop=False, PixelData=bytes(len(original.tobytes())))
    elsewhere = rewrite(
        study[:1],
        tmp_path / "elsewhere",
        new_sop=False,
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
    )
    # The same dataset in other encodings (a sender resending in another transfer syntax): duplicates too.
    implicit = tmp_path / "implicit.dcm"
    ds = pydicom.dcmread(study[0])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.save_as(implicit, implicit_vr=True, little_endian=True)
    jpeg = tmp_path / "jpeg.dcm"
    subprocess.run([dcmtk("dcmcjpeg"), str(study[0]), str(jpeg)], check=True, capture_output=True)
    with running(config) as listener:
        assert send(port, study) == [SUCCESS] * 3
        assert send(port, study[:1]) == [SUCCESS]  # the same bytes again: acknowledged, nothing changes
        assert send(port, [implicit, jpeg]) == [SUCCESS, SUCCESS]
        assert send(port, changed) == [CONFLICT]
        assert send(port, elsewhere) == [CONFLICT]
        counted = listener.status()["counts"]["events"]
    assert counted["instances_duplicate"] == 3 and counted["instances_conflicting"] == 2
    stored = [Path(p) for (p,) in rows(spool, "SELECT path FROM instances")]
    assert len(stored) == 3 and len(list((spool / "incoming").rglob("*.dcm"))) == 3
    sop = str(pydicom.dcmread(study[0]).SOPInstanceUID)
    (held,) = [p for p in stored if pydicom.dcmread(p).SOPInstanceUID == sop]
    assert (pydicom.dcmread(held).pixel_array == original).all()
    reasons = " ".join(p.read_text() for p in (spool / "quarantine").glob("*.txt"))
    assert "resent with different content" in reasons and "SOP Instance UID already held in another study" in reasons


# --- complete when complete -------------------------------------------------------------------------
def test_completion_counts_from_the_restart_and_a_late_instance_reruns_the_whole_study(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    """3 of 6 instances, then the listener is down for longer than the quiet period: after the restart
    the study is not taken as complete at once. The rest arrives; the job sees 5. A sixth instance
    arriving while that job runs stays out of it, and reopens the study: a second job sees all 6."""
    port, spool = free_port(), tmp_path / "spool"
    config = listener_config(tmp_path, port, orthanc, app_args=["--sleep", "2"], quiet_period_s=2.0)
    study = make_study(tmp_path / "s", seed=3200, slices=6)
    with running(config):
        assert send(port, study[:3]) == [SUCCESS] * 3
    time.sleep(3.0)  # down longer than the quiet period (as after a crash)
    with running(config) as listener:
        time.sleep(1.0)
        assert rows(spool, "SELECT COUNT(*) FROM jobs") == [(0,)], "a partial study was taken as complete"
        assert send(port, study[3:5]) == [SUCCESS] * 2
        wait_for(lambda: rows(spool, "SELECT state FROM jobs") == [("running",)], 30, "the job to run")
        assert send(port, study[5:]) == [SUCCESS]  # late: while the job runs
        wait_for(lambda: rows(spool, "SELECT state FROM jobs") == [("done",), ("done",)], 60, "both generations")
        counted = listener.status()["counts"]["events"]
    assert rows(spool, "SELECT generation, inputs FROM jobs ORDER BY id") == [(1, 5), (2, 6)]
    comments = [pydicom.dcmread(spool / "jobs" / str(j) / "output" / "result.dcm").ImageComments for j in (1, 2)]
    assert comments == ["5 CT instances received", "6 CT instances received"]
    assert counted["instances_late"] == 1


def test_a_file_stored_but_never_recorded_before_a_crash_is_removed_at_the_next_start(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    """The state a kill -9 leaves between a store's rename into incoming/ and its commit: a file no instance
    names, never acknowledged. The next start removes it; recorded instances stay."""
    port, spool = free_port(), tmp_path / "spool"
    config = listener_config(tmp_path, port, orthanc)
    with running(config):
        assert send(port, make_study(tmp_path / "s", seed=3410)) == [SUCCESS] * 3
        wait_for(lambda: rows(spool, "SELECT state FROM jobs") == [("done",)], 60, "the job")
    kept = sorted((spool / "incoming").rglob("*.dcm"))
    orphan = spool / "incoming" / "a" / "b" / "c.d.dcm"
    orphan.parent.mkdir(parents=True)
    shutil.copy(kept[0], orphan)
    with running(config):
        pass
    assert not orphan.exists() and sorted((spool / "incoming").rglob("*.dcm")) == kept


def test_a_study_resent_after_retention_is_deleted_again_and_not_rerun(tmp_path: Path, orthanc: Orthanc) -> None:
    port, spool = free_port(), tmp_path / "spool"
    config = listener_config(tmp_path, port, orthanc, retention_days=0)
    study = make_study(tmp_path / "s", seed=3300)
    before = len(orthanc.results())
    with running(config) as listener:
        assert send(port, study) == [SUCCESS] * 3
        wait_for(lambda: len(orthanc.results()) == before + 1, 60, "the result")
        wait_for(lambda: rows(spool, "SELECT state FROM deliveries") == [("sent",)], 30, "the delivery recorded")
        assert listener.purge_finished() == 1
        assert send(port, study) == [SUCCESS] * 3  # resent after retention: kept again, for a while
        wait_for(lambda: rows(spool, "SELECT state FROM studies") == [("complete",)], 20, "the resend to settle")
        assert listener.purge_finished() == 1  # ... and deleted again (no PHI kept for ever)
        assert not list((spool / "incoming").rglob("*.dcm"))
    assert rows(spool, "SELECT COUNT(*) FROM jobs") == [(1,)]


def test_a_late_instance_of_a_purged_study_is_not_run_alone_and_the_whole_resend_runs(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    """2 of 3 instances processed, delivered and deleted by the retention; then the third: the route does
    not run on it alone (it did, and its result would have superseded the whole study's), one line says
    why; when the whole study is sent again, the route runs on all 3."""
    port, spool = free_port(), tmp_path / "spool"
    config = listener_config(tmp_path, port, orthanc, retention_days=0)
    study = make_study(tmp_path / "s", seed=3350)
    lines = listener_logs()
    with running(config) as listener:
        assert send(port, study[:2]) == [SUCCESS] * 2
        wait_for(lambda: rows(spool, "SELECT state FROM deliveries") == [("sent",)], 60, "the first result")
        assert listener.purge_finished() == 1
        assert send(port, study[2:]) == [SUCCESS]
        said = wait_for(
            lambda: [e for e in log_events(lines) if e["event"] == "study_not_routed"], 20, "the line saying why"
        )
        assert said[0]["missing"] == 2
        assert rows(spool, "SELECT COUNT(*) FROM jobs") == [(1,)]
        assert send(port, study) == [SUCCESS] * 3  # the whole study again
        wait_for(lambda: rows(spool, "SELECT COUNT(*) FROM jobs WHERE state = 'done'") == [(2,)], 60, "a rerun")
    assert rows(spool, "SELECT inputs FROM jobs ORDER BY id") == [(2,), (3,)]


# --- exactly once, whatever the route's process tree -----------------------------------------------
def wrapped(ledger: Path, sleep: float) -> list[str]:
    """A route command behind `sh -c`: the real work is a grandchild of the listener."""
    script = f'"{sys.executable}" "{APP}" "$0" "$1" --sleep {sleep} --ledger "{ledger}"'
    return ["sh", "-c", script, "{input}", "{output}"]


def test_a_wrapped_app_dies_with_the_listener_and_the_study_runs_once(tmp_path: Path, orthanc: Orthanc) -> None:
    port, ledger = free_port(), tmp_path / "ledger.txt"
    config = with_route(listener_config(tmp_path, port, orthanc), command=wrapped(ledger, 4))
    spool = tmp_path / "spool"
    before = len(orthanc.results())
    listener = ListenerProcess(config, port).start()
    try:
        assert send(port, make_study(tmp_path / "s", seed=3400)) == [SUCCESS] * 3
        wait_for(lambda: rows(spool, "SELECT state FROM jobs") == [("running",)], 30, "the job to run")
        time.sleep(1.0)  # the app is running under its wrapper
        listener.kill9()
        time.sleep(6.0)  # longer than the app takes: an orphan would have finished by now
        assert not ledger.exists(), "the wrapped app outlived the listener"
        listener.start()
        wait_for(lambda: len(orthanc.results()) == before + 1, 60, "the result after the restart")
    finally:
        listener.stop()
    assert len(ledger.read_text().split()) == 1


def test_a_timed_out_wrapped_job_is_ended_whole_on_every_attempt(tmp_path: Path, orthanc: Orthanc) -> None:
    port, ledger = free_port(), tmp_path / "ledger.txt"
    config = listener_config(tmp_path, port, orthanc, max_attempts=2)
    with_route(config, command=wrapped(ledger, 3), timeout_s=1)
    spool = tmp_path / "spool"
    with running(config):
        assert send(port, make_study(tmp_path / "s", seed=3500)) == [SUCCESS] * 3
        wait_for(lambda: rows(spool, "SELECT state FROM jobs") == [("failed",)], 60, "the job to fail twice")
    time.sleep(4.0)
    assert not ledger.exists(), "a timed-out job ran to completion anyway"


def test_a_routes_stop_command_ends_what_the_job_started_outside_its_tree(tmp_path: Path, orthanc: Orthanc) -> None:
    """A route whose command has something else run the work (as `docker run` has the engine's daemon):
    here a process started with a clean environment, outside the job's tree. The route's `stop` command
    ends it when the job times out."""
    port, pids = free_port(), tmp_path / "pids"
    pids.mkdir()
    outside = f'env -i sleep 300 & echo $! > "{pids}/{{job}}"; wait'
    config = listener_config(tmp_path, port, orthanc, max_attempts=1)
    with_route(
        config,
        command=["sh", "-c", outside, "{input}", "{output}"],
        stop=["sh", "-c", f'kill -9 "$(cat "{pids}/{{job}}")"'],
        timeout_s=1,
    )
    with running(config):
        assert send(port, make_study(tmp_path / "s", seed=3600)) == [SUCCESS] * 3
        wait_for(lambda: rows(tmp_path / "spool", "SELECT state FROM jobs") == [("failed",)], 60, "the timeout")
    pid = int((pids / "1").read_text())
    wait_for(
        lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
        10,
        "the process started outside the tree to end",
    )


def _containers(engine: str, name: str) -> list[str]:
    out = subprocess.run(
        [engine, "ps", "-q", "--no-trunc", "--filter", f"name=^{name}$"], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


@pytest.mark.slow
def test_a_container_route_is_ended_with_its_job_and_a_kill_9_never_leaves_two_running(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    """A route that runs its app in a container (`podman run`, as a MAP route does): the container runs
    under the engine (conmon), outside the job's process tree, so ending the tree cannot end it. After a
    kill -9 of the listener the restart ends it with the route's `stop` before the job runs again, and a
    graceful stop ends the rerun's container too: never two containers of one job, none left behind."""
    from oncoplan.deploy.map_package import container_engine, debian_base

    engine = container_engine()
    if engine is None:
        pytest.skip("no container engine answers here (podman info / docker info fail)")
    base = debian_base(engine, log=lambda _line: None)
    name = f"oncoplan-stoptest-{os.getpid()}-{{job}}"
    port = free_port()
    config = listener_config(tmp_path, port, orthanc, max_attempts=3)
    with_route(
        config,
        command=[
            *[engine, "run", "--rm", "--name", name, "--network", "none"],
            *["-v", "{input}:/var/holoscan/input:ro", "-v", "{output}:/var/holoscan/output", base, "sleep", "600"],
        ],
        stop=[engine, "rm", "-f", "-t", "0", name],
        timeout_s=600,
    )
    job1 = name.replace("{job}", "1")
    listener = ListenerProcess(config, port).start()
    try:
        assert send(port, make_study(tmp_path / "s", seed=3700)) == [SUCCESS] * 3
        first = wait_for(lambda: _containers(engine, job1), 120, "the job's container to start")
        listener.kill9()
        time.sleep(2)
        outlived = bool(set(first) & set(_containers(engine, job1)))  # what a route without `stop` would leave
        listener = ListenerProcess(config, port).start()
        again = wait_for(lambda: [c for c in _containers(engine, job1) if c not in first], 120, "the job's second run")
        assert not set(first) & set(_containers(engine, job1)), "the first run's container still runs"
        assert len(_containers(engine, job1)) == 1
        listener.stop()
        wait_for(lambda: not _containers(engine, job1), 60, "the rerun's container to end with the listener")
        assert again
        print(f"the first container outlived the listener's kill -9: {outlived}")
    finally:
        listener.stop()
        subprocess.run([engine, "rm", "-f", "-t", "0", job1], capture_output=True, check=False)


# --- deliveries are isolated ------------------------------------------------------------------------
def test_an_undeliverable_result_fails_alone(tmp_path: Path, orthanc: Orthanc, capfd: pytest.CaptureFixture) -> None:
    """Each job writes a good result and one with a 200-character SOP UID: the good ones reach Orthanc
    once, the bad ones are recorded failed for good (not retried in lockstep with the rest)."""
    port, spool = free_port(), tmp_path / "spool"
    config = listener_config(tmp_path, port, orthanc, app_args=["--bad-result"])
    before = len(orthanc.results())
    lines = listener_logs()
    with running(config):
        for seed in (3700, 3701):
            assert send(port, make_study(tmp_path / f"s{seed}", seed=seed)) == [SUCCESS] * 3
        wait_for(lambda: len(orthanc.results()) == before + 2, 60, "both good results")
        wait_for(
            lambda: sorted(rows(spool, "SELECT state FROM deliveries")) == [("failed",)] * 2 + [("sent",)] * 2,
            30,
            "the deliveries recorded",
        )
    failed = [e for e in log_events(lines) if e["event"] == "result_not_sent"]
    assert len(failed) == 2 and all(e["final"] and "not a valid UID" in e["error"] for e in failed)
    assert "2222222222" not in capfd.readouterr().err


# --- bounded resources, clean refusals ----------------------------------------------------------------
ASSOCIATE_RQ_START = bytes([0x01, 0x00, 0x00, 0x00, 0x00, 0xCD, 0x00, 0x01, 0x00, 0x00])  # 10 of 211 bytes


def test_silent_connections_neither_block_an_allowed_sender_nor_outlive_the_association_timeout(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    """20 connections from another address, each sending 10 bytes of an A-ASSOCIATE-RQ and then nothing:
    4 are let in (the per-peer limit) and cut after the 2 s association timeout, 16 are refused at once;
    an allowed sender meanwhile stores its study; each refusal and cut is one line with its reason."""
    port = free_port()
    config = listener_config(
        tmp_path, port, orthanc, max_associations=8, max_associations_per_peer=4, association_timeout_s=2
    )
    lines = listener_logs()
    with running(config) as listener:
        silent = []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0), timeout=5)
            with suppress(OSError):
                s.sendall(ASSOCIATE_RQ_START)
            silent.append(s)
        assert send(port, make_study(tmp_path / "s", seed=3800), timeout_s=10) == [SUCCESS] * 3
        wait_for(lambda: sum(e["event"] == "association_aborted" for e in log_events(lines)) >= 4, 20, "the silent cut")
        counted = listener.status()["counts"]["events"]
        for s in silent:
            s.close()
    log = log_events(lines)
    refused = [e for e in log if e["event"] == "connection_refused"]
    cut = [e for e in log if e["event"] == "association_aborted"]
    assert len(refused) == 16 and all(e["reason"] == "per-peer limit (4)" for e in refused)
    assert len(cut) == 4 and all(e["reason"] == "no association within 2 s" for e in cut), cut
    assert counted["associations_refused"] == 16
    assert not any(e["event"] == "association_refused" and e.get("caller") == "SENDER" for e in log)


def test_an_idle_tcp_connection_does_not_block_tls_associations(tmp_path: Path, orthanc: Orthanc) -> None:
    cert, key = self_signed_cert(tmp_path)
    port = free_port()
    config = listener_config(tmp_path, port, orthanc, tls={"cert": str(cert), "key": str(key)}, association_timeout_s=3)
    with running(config):
        idle = socket.create_connection(("127.0.0.1", port))  # TCP only: no ClientHello, ever
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ae = AE(ae_title="SENDER")
        ae.acse_timeout = ae.network_timeout = 5
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="ONCOPLAN", tls_args=(ctx, "localhost"))
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
        time.sleep(4)
        idle.settimeout(2)
        assert idle.recv(10) == b"", "the idle connection was not closed after the association timeout"
        idle.close()


def test_a_call_to_another_ae_title_is_refused_with_its_reason(tmp_path: Path, orthanc: Orthanc) -> None:
    port = free_port()
    config = listener_config(tmp_path, port, orthanc)
    lines = listener_logs()
    with running(config):
        assert send(port, make_study(tmp_path / "s", seed=3900), called="SOMEONE_ELSE") == [None] * 3
        assert send(port, make_study(tmp_path / "t", seed=3901), calling="INTRUDER") == [None] * 3
    refused = {e["reason"] for e in log_events(lines) if e["event"] == "association_refused"}
    assert refused == {"called AE title is not ours", "calling AE title not allowed"}


@pytest.mark.parametrize(
    ("uid", "why"),
    [
        ("../../x", "path"),
        ("1." + "2" * 198, "200 characters"),
        ("1.2.abc.4", "letters"),
        ("1.2.3\x004.5", "a NUL inside"),
        ("1.02.3", "a leading zero"),
        (["1.2.3", "1.2.4"], "two values"),
    ],
)
def test_a_study_uid_that_is_not_a_uid_is_refused_and_quarantined(
    tmp_path: Path, orthanc: Orthanc, uid: object, why: str
) -> None:
    port, spool = free_port(), tmp_path / "spool"
    config = listener_config(tmp_path, port, orthanc)
    lines = listener_logs()  # pydicom's complaints about the bad value, here and in the listener, are captured
    bad = rewrite(make_study(tmp_path / "s", seed=4000, slices=1), tmp_path / "bad", StudyInstanceUID=uid)
    with running(config) as listener:
        start = len(lines)
        assert send(port, bad) == [INVALID_UID], why
        wait_for(lambda: listener.status()["associations_open"] == 0, 10, "the association to end")
        inside = log_events(lines[start:])
    # one line for the refusal: pydicom's own complaints inside the association are not lines of their own
    assert [e["event"] for e in inside if e["event"] in ("quarantined", "library_message")] == ["quarantined"], inside
    (reason,) = [p.read_text() for p in (spool / "quarantine").glob("*.txt")]
    assert "StudyInstanceUID" in reason
    assert rows(spool, "SELECT COUNT(*) FROM instances") == [(0,)]
    assert not list((spool / "incoming").rglob("*.dcm")) and not list((spool / "receiving").iterdir())
    assert "2222222222" not in json.dumps(inside) and "abc" not in json.dumps(inside)


def test_an_instance_over_the_size_limit_is_refused_and_the_association_goes_on(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    port, spool = free_port(), tmp_path / "spool"
    config = listener_config(tmp_path, port, orthanc, max_instance_mb=1)
    big = make_study(tmp_path / "big", seed=4100, slices=1, size=1024)  # 2 MB of pixels
    small = make_study(tmp_path / "small", seed=4101, slices=1)
    with running(config) as listener:
        assert send(port, big + small) == [OUT_OF_RESOURCES, SUCCESS]
        assert listener.status()["counts"]["events"]["instances_too_large"] == 1
    assert not list((spool / "receiving").iterdir())
    assert rows(spool, "SELECT COUNT(*) FROM instances") == [(1,)]


# The sender stalls for good before its PDU past 12 MB (the listener takes 4 MB PDUs), so it is always killed
# mid-instance (on a fast loopback the whole 32 MB used to arrive between two polls of the test, and the "cut"
# was a complete store).
SEND_ONE = """
import sys
import time
import pydicom
from pynetdicom import AE, transport
sent, send = [0], transport.AssociationSocket.send
def stalling(self, data):
    sent[0] += len(data)
    if sent[0] > 12 * 2**20:
        time.sleep(3600)
    send(self, data)
transport.AssociationSocket.send = stalling
ds = pydicom.dcmread(sys.argv[2])
ae = AE(ae_title="SENDER")
ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
assoc = ae.associate("127.0.0.1", int(sys.argv[1]), ae_title="ONCOPLAN")
assoc.send_c_store(ds)
"""


def test_a_transfer_cut_mid_instance_leaves_nothing_in_receiving(tmp_path: Path, orthanc: Orthanc) -> None:
    """A sender killed while a 32 MB instance is arriving: the part already written is removed when the
    association ends (it stayed a day, with its PHI, and seven such cuts filled the spool)."""
    port, spool = free_port(), tmp_path / "spool"
    big = make_study(tmp_path / "big", seed=4150, slices=1, size=4096)
    lines = listener_logs()
    with running(listener_config(tmp_path, port, orthanc)):
        sender = subprocess.Popen([sys.executable, "-c", SEND_ONE, str(port), str(big[0])])
        try:
            wait_for(
                lambda: any(p.stat().st_size > 2**20 for p in (spool / "receiving").iterdir()),
                60,
                "the instance to be arriving",
                interval=0.02,
            )
        finally:
            sender.kill()
            sender.wait()
        wait_for(lambda: [e for e in log_events(lines) if e["event"] == "association_aborted"], 30, "the end")
        wait_for(lambda: not list((spool / "receiving").iterdir()), 10, "receiving/ to be empty")
    assert rows(spool, "SELECT COUNT(*) FROM instances") == [(0,)]


def test_the_quarantine_keeps_to_its_quota_and_its_retention(tmp_path: Path, orthanc: Orthanc) -> None:
    port, spool = free_port(), tmp_path / "spool"
    config = listener_config(tmp_path, port, orthanc, quarantine_max_mb=0.001)  # 1 KB
    study = make_study(tmp_path / "s", seed=4200, slices=1)
    short = pydicom.dcmread(study[0])
    short.PixelData = short.PixelData[:100]
    short.save_as(tmp_path / "short.dcm")
    with running(config) as listener:
        assert send(port, [tmp_path / "short.dcm"]) == [CANNOT_UNDERSTAND]  # refused all the same
        assert listener.status()["counts"]["events"]["instances_quarantined"] == 1
    assert not list((spool / "quarantine").iterdir())  # over the quota: the reason logged, the bytes not kept
    keeper = Spool(tmp_path / "other", 0)
    kept = keeper.quarantine(b"x" * 100, "a reason")
    assert kept is not None and keeper.clean(quarantine_days=1) == 0
    old = time.time() - 2 * 86400
    for p in (kept, kept.with_suffix(".txt")):
        os.utime(p, (old, old))
    assert keeper.clean(quarantine_days=1) == 2 and not list((tmp_path / "other" / "quarantine").iterdir())


@pytest.mark.skipif(shutil.which("ss") is None, reason="iproute2's ss is not installed")
def test_the_listen_backlog_takes_a_burst_of_senders(tmp_path: Path, orthanc: Orthanc) -> None:
    port = free_port()
    with running(listener_config(tmp_path, port, orthanc)):
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    backlog = int(out.split()[2])  # Send-Q of a listening socket is its backlog
    assert backlog >= 128, out


# --- compressed transfer syntaxes ---------------------------------------------------------------------
def test_a_pacs_sending_jpeg_lossless_only_is_served_and_the_study_kept_as_sent(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    port, spool = free_port(), tmp_path / "spool"
    config = listener_config(tmp_path, port, orthanc)
    plain = make_study(tmp_path / "s", seed=4300)
    jpeg = []
    for i, f in enumerate(plain):
        out = tmp_path / "jpeg" / f"{i}.dcm"
        out.parent.mkdir(exist_ok=True)
        subprocess.run([dcmtk("dcmcjpeg"), str(f), str(out)], check=True, capture_output=True)
        jpeg.append(out)
    assert pydicom.dcmread(jpeg[0]).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    before = len(orthanc.results())
    with running(config):
        assert send(port, jpeg[:2]) == [SUCCESS] * 2  # pynetdicom proposing JPEG Lossless SV1 only
        subprocess.run(
            [dcmtk("storescu"), "-xs", "-aet", "STORESCU", "-aec", "ONCOPLAN", "127.0.0.1", str(port), str(jpeg[2])],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(lambda: len(orthanc.results()) == before + 1, 60, "the result")
    for (path,) in rows(spool, "SELECT path FROM instances"):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == JPEGLosslessSV1  # stored as sent, not transcoded
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def captured_associate_rq() -> bytes:
    """The A-ASSOCIATE-RQ PDU pynetdicom sends, as bytes (to be altered as a broken sender would)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)  # a caller that never connects fails the test, never hangs it
    ae = AE(ae_title="SENDER")
    ae.acse_timeout = ae.network_timeout = 2
    ae.add_requested_context("1.2.840.10008.1.1")
    caller = threading.Thread(target=ae.associate, args=("127.0.0.1", server.getsockname()[1]), daemon=True)
    caller.start()
    conn, _ = server.accept()
    conn.settimeout(5)
    data = b""
    while len(data) < 6 or len(data) < 6 + int.from_bytes(data[2:6], "big"):
        data += conn.recv(65536)
    conn.close()
    server.close()
    caller.join(timeout=30)
    return data


@pytest.mark.parametrize(
    "calling",
    [b"\x1b[31mODD\\AE\x07\x00\x00\x00\x00", b"SENDER\xff\xfe\xfd\x80      "],
    ids=["control", "non-ascii"],
)
def test_an_association_request_with_an_odd_ae_title_ends_in_one_line_with_its_reason(
    tmp_path: Path, orthanc: Orthanc, calling: bytes
) -> None:
    port = free_port()
    request = bytearray(captured_associate_rq())
    assert len(calling) == 16
    request[26:42] = calling  # the calling AE title field of the A-ASSOCIATE-RQ
    lines = listener_logs()
    # The association timeout (pynetdicom's wait for the A-ASSOCIATE-RQ) is set past the wait below: the line
    # must come from the connection ending, not from that wait running out.
    with running(listener_config(tmp_path, port, orthanc, association_timeout_s=60)) as listener:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(bytes(request))
            answer = s.recv(1024)  # A-ASSOCIATE-RJ or A-ABORT, then the close
        try:
            wait_for(
                lambda: [e for e in log_events(lines) if e["event"] in ("association_aborted", "association_refused")],
                30,
                "the line saying how it ended",
            )
        except AssertionError as exc:  # what it saw instead (a CI run once timed out here)
            raise AssertionError(f"{exc}; answer {answer[:12]!r}; {listener.status()}; {log_events(lines)}") from None
        time.sleep(0.5)
    ended = [e for e in log_events(lines) if e["event"] in ("association_aborted", "association_refused")]
    assert len(ended) == 1 and ended[0]["reason"], ended


def test_a_connection_whose_protocol_reader_dies_ends_at_once_with_one_line(
    tmp_path: Path, orthanc: Orthanc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom's reader thread can end on an exception without handing anything to the association's
    thread, which then waited out the association timeout before its closing line (and held its slot): the
    connection is cut and its thread ends at once."""
    from pynetdicom.dul import DULServiceProvider

    def broken(self: DULServiceProvider) -> bool:
        raise RuntimeError("reader broke")

    # Captured before the reader is broken: the capture's own pynetdicom requestor would break with it, at
    # times before it connected (CI, stop 38: the capture then waited for a connection for ever).
    request = captured_associate_rq()
    monkeypatch.setattr(DULServiceProvider, "_is_transport_event", broken)
    port = free_port()
    lines = listener_logs()
    with running(listener_config(tmp_path, port, orthanc, association_timeout_s=60)) as listener:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(request)
            s.recv(1024)
        ended = wait_for(
            lambda: [e for e in log_events(lines) if e["event"] == "association_aborted"],
            30,
            "the line saying how it ended",
        )
        wait_for(lambda: listener.status()["associations_open"] == 0, 30, "the association's thread to end")
    assert len(ended) == 1 and ended[0]["reason"] == "protocol error before the association was accepted", ended
    assert "reader broke" in ended[0]["detail"]


SEND_WITH_ANY_UID = """
import sys
import pydicom
from pynetdicom import AE, _config
_config.VALIDATORS["UI"] = lambda uid: (True, "")  # a sender that does not check its UIDs
ds = pydicom.dcmread(sys.argv[2])
ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sys.argv[3]
ae = AE(ae_title="SENDER")
ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
assoc = ae.associate("127.0.0.1", int(sys.argv[1]), ae_title="ONCOPLAN")
assert assoc.is_established
status = assoc.send_c_store(ds)
print("STATUS", status.Status if "Status" in status else "none")
if assoc.is_established:
    assoc.release()
"""


def test_a_65_character_uid_in_the_store_command_ends_in_one_line_with_its_reason(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    """The DIMSE command's Affected SOP Instance UID is read by pynetdicom before any handler of ours: a
    65-character one (over VR UI's 64) must not end the association silently, nor reach a log as a UID."""
    port = free_port()
    study = make_study(tmp_path / "s", seed=4310, slices=1)
    long_uid = "1.2." + "3" * 61
    assert len(long_uid) == 65
    lines = listener_logs()
    with running(listener_config(tmp_path, port, orthanc)) as listener:
        sent = subprocess.run(
            [sys.executable, "-c", SEND_WITH_ANY_UID, str(port), str(study[0]), long_uid],
            capture_output=True,
            text=True,
            timeout=120,
        )
        ended = wait_for(
            lambda: [e for e in log_events(lines) if e["event"] in ("association_aborted", "instance_quarantined")],
            30,
            "the line saying what happened",
        )
        time.sleep(0.5)
        logged = log_events(lines)
        assert listener.status()["counts"]["instances"]["received"] == 0
    assert "STATUS 0" not in sent.stdout, sent.stdout  # never acknowledged as stored
    assert [e["reason"] for e in ended] == ["protocol error"], ended
    assert "must not exceed 64 characters" in ended[0]["detail"]
    assert long_uid not in json.dumps(logged) and "3" * 61 not in json.dumps(logged)


def test_a_pdu_that_stops_part_way_ends_its_association_after_the_pdu_timeout(tmp_path: Path, orthanc: Orthanc) -> None:
    """An allowed caller's association is accepted, then a P-DATA-TF PDU announces 1,000 bytes and sends
    10: the read timeout ends it (pynetdicom's own timers never fire while its reader waits inside a PDU)."""
    port = free_port()
    request = bytearray(captured_associate_rq())
    request[10:26] = b"ONCOPLAN".ljust(16)  # the called AE title field
    lines = listener_logs()
    with running(listener_config(tmp_path, port, orthanc, pdu_timeout_s=2)):
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(bytes(request))
            assert s.recv(1)[0] == 0x02  # A-ASSOCIATE-AC
            s.sendall(bytes([0x04, 0x00]) + (1000).to_bytes(4, "big") + b"\x00" * 10)
            t0 = time.monotonic()
            while s.recv(65536):  # until the listener closes the connection
                pass
            waited = time.monotonic() - t0
        wait_for(lambda: [e for e in log_events(lines) if e["event"] == "association_aborted"], 10, "the closing line")
    (ended,) = [e for e in log_events(lines) if e["event"] == "association_aborted"]
    assert ended["accepted"] and ended["caller"] == "SENDER" and waited < 15, (ended, waited)


def test_a_pdu_dribbled_a_byte_at_a_time_ends_its_association_by_its_deadline(tmp_path: Path, orthanc: Orthanc) -> None:
    """A P-DATA-TF PDU of 1,000 bytes sent a byte a second: every read succeeds within the PDU timeout, but
    the PDU as a whole must arrive within the timeout plus its length at a minimum rate (a slow-loris held
    every slot for as long as it liked)."""
    port = free_port()
    request = bytearray(captured_associate_rq())
    request[10:26] = b"ONCOPLAN".ljust(16)
    lines = listener_logs()
    with running(listener_config(tmp_path, port, orthanc, pdu_timeout_s=3)):
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(bytes(request))
            assert s.recv(1)[0] == 0x02  # A-ASSOCIATE-AC
            s.recv(65536)
            s.sendall(bytes([0x04, 0x00]) + (1000).to_bytes(4, "big"))
            t0, sent = time.monotonic(), 0
            with suppress(OSError):
                while sent < 1000 and time.monotonic() - t0 < 30:
                    s.sendall(b"\x00")
                    sent += 1
                    s.settimeout(1.0)
                    with suppress(TimeoutError):
                        if s.recv(65536) == b"":  # the listener closed the connection
                            break
            waited = time.monotonic() - t0
        wait_for(lambda: [e for e in log_events(lines) if e["event"] == "association_aborted"], 10, "the closing line")
    (ended,) = [e for e in log_events(lines) if e["event"] == "association_aborted"]
    assert waited < 10 and sent < 12, (waited, sent)
    assert "not received in time" in (ended["detail"] or ""), ended


def test_a_pdu_claiming_more_than_the_limit_is_refused_before_it_is_read(tmp_path: Path, orthanc: Orthanc) -> None:
    """An unauthenticated peer's A-ASSOCIATE-RQ header claiming 600 MB, then the bytes: refused on its
    header, so the listener's memory does not grow with it (it grew 1.2 GB)."""
    import resource

    port = free_port()
    lines = listener_logs()
    with running(listener_config(tmp_path, port, orthanc)):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
        zeros, sent = bytes(2**20), 0
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(bytes([0x01, 0x00]) + (600 * 2**20).to_bytes(4, "big"))
            with suppress(OSError):
                while sent < 600 * 2**20:
                    s.sendall(zeros)
                    sent += len(zeros)
        wait_for(lambda: [e for e in log_events(lines) if e["event"] == "association_aborted"], 10, "the closing line")
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    (ended,) = [e for e in log_events(lines) if e["event"] == "association_aborted"]
    assert "over the 1048576-byte limit" in (ended["detail"] or ""), ended
    assert not [e for e in log_events(lines) if e["event"] == "library_message"]  # one line, not two
    assert sent < 100 * 2**20 and grown_mb < 50, (sent, grown_mb)


def test_an_app_that_finished_just_before_a_crash_is_not_run_again(tmp_path: Path, orthanc: Orthanc) -> None:
    """The state a kill -9 leaves between the app's exit and the job's commit: the job recorded running,
    its results not queued, the supervisor's exit status (0) and the output on disk. At restart the job is
    recorded done from that status and its result delivered, and the app does not run again (a CI run
    once saw a study processed twice this way). A job with no recorded status runs again."""
    import sqlite3

    port, spool, ledger = free_port(), tmp_path / "spool", tmp_path / "ledger.txt"
    config = listener_config(tmp_path, port, orthanc, app_args=["--ledger", str(ledger)])
    studies = [make_study(tmp_path / f"s{i}", seed=4500 + i) for i in range(2)]
    with running(config):
        for study in studies:
            assert send(port, study) == [SUCCESS] * 3
        wait_for(lambda: rows(spool, "SELECT state FROM jobs") == [("done",), ("done",)], 60, "both jobs")
        # and both results in the PACS before the stop: one still on its way then was sent by the restart and
        # counted as a new result (a race of the test, seen under load)
        wait_for(lambda: rows(spool, "SELECT COUNT(*) FROM deliveries WHERE state = 'sent'") == [(2,)], 60, "sent")
    with sqlite3.connect(spool / "queue.sqlite") as db:  # as if killed before either job was recorded done
        db.execute("UPDATE jobs SET state = 'running'")
        db.execute("DELETE FROM deliveries")
    (spool / "jobs" / "2" / "exit_status").unlink()  # job 2's app did not finish
    before = len(orthanc.results())
    with running(config):
        wait_for(lambda: rows(spool, "SELECT state FROM jobs") == [("done",), ("done",)], 60, "both jobs again")
        wait_for(lambda: rows(spool, "SELECT COUNT(*) FROM deliveries WHERE state = 'sent'") == [(2,)], 60, "sent")
    assert len(ledger.read_text().split()) == 3  # 2 first runs + job 2 again; job 1 was not run again
    assert rows(spool, "SELECT id, attempts FROM jobs ORDER BY id") == [(1, 1), (2, 2)]
    assert len(orthanc.results()) == before  # the same result UIDs: the PACS already held them


def test_a_routes_env_reaches_its_runs(tmp_path: Path, orthanc: Orthanc, breast_cohort: Path) -> None:
    """A route's `env` (e.g. the site's preferred series description) is set for each of its runs: in a
    command route's process tree, and in a warm app worker for that job only."""
    from oncoplan.deploy.listener.warm import WarmApp

    from .helpers import cohort_rows

    port, spool = free_port(), tmp_path / "spool"
    script = f'printf %s "$ONCOPLAN_SERIES_DESCRIPTION" > "$0/../seen"; exec "{sys.executable}" "{APP}" "$0" "$1"'
    config = listener_config(tmp_path, port, orthanc)
    with_route(
        config, command=["sh", "-c", script, "{input}", "{output}"], env={"ONCOPLAN_SERIES_DESCRIPTION": "RT SIM"}
    )
    with running(config):
        assert send(port, make_study(tmp_path / "s", seed=4600)) == [SUCCESS] * 3
        wait_for(lambda: rows(spool, "SELECT state FROM jobs") == [("done",)], 60, "the job")
    assert (spool / "jobs" / "1" / "seen").read_text() == "RT SIM"

    study = breast_cohort / cohort_rows(breast_cohort)[0]["image_dir"]
    app = WarmApp(None, tmp_path / "warm.log")
    try:  # a backend name no app knows: refused before the graph, so the job saw the route's env ...
        args = [
            "contour",
            "-i",
            str(study),
            "-o",
            str(tmp_path / "a"),
            "--note",
            "N0, breast conserving surgery, left side",
        ]
        assert app.run(args, tmp_path / "a.log", 300, {"ONCOPLAN_BACKENDS": "nonsense"}) == 2
        assert "ONCOPLAN_BACKENDS" in (tmp_path / "a.log").read_text()
        args[4] = str(tmp_path / "b")  # ... and the next job of the same worker no longer sees it
        assert app.run(args, tmp_path / "b.log", 300) == 0
    finally:
        app.stop()
