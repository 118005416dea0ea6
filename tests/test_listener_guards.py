"""Guards the hostile tester's findings asked for: a job process that cleared its environment is still
the job's, a second listener on the same spool touches nothing, a result the destination will never
take fails for good, and what a failing app prints stays out of the listener's log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from oncoplan.deploy.listener import logs

from .pacs import (
    APP,
    REPO,
    ListenerProcess,
    Orthanc,
    free_port,
    listener_config,
    listener_logs,
    log_events,
    make_study,
    rows,
    running,
    send,
    wait_for,
    with_route,
)

pytestmark = pytest.mark.integration

SUCCESS = 0x0000


def events(capfd: pytest.CaptureFixture) -> tuple[list[dict], str]:
    err = capfd.readouterr().err
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")], err


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in "ZX"
    except OSError:
        return False


def session_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[3])


# --- a job's processes are found even without their environment -----------------------------------------
@pytest.mark.parametrize("killed", ["listener", "listener_and_supervisor"])
def test_a_job_process_that_cleared_its_environment_never_outlives_the_listener_and_the_study_runs_once(
    tmp_path: Path, orthanc: Orthanc, killed: str
) -> None:
    """The route's grandchild clears its environment (`env -i`, as sudo's env_reset or `su -` do), so it no
    longer carries the job's token. A kill -9 of the listener ends it all the same (its supervisor ends its
    session); with the supervisor killed too (nothing left to end it then), the restart ends it before the
    job runs again. The app completes once."""
    port, ledger, pidfile, marker = free_port(), tmp_path / "ledger.txt", tmp_path / "app.pid", tmp_path / "ran"
    app = f'"{sys.executable}" "{APP}" "$0" "$1" --ledger "{ledger}"'
    script = f'if [ -e "{marker}" ]; then s=0; else s=60; fi; touch "{marker}"; echo $$ > "{pidfile}"; '
    script += f"exec env -i PATH=/usr/bin:/bin {app} --sleep $s"
    config = with_route(listener_config(tmp_path, port, orthanc), command=["sh", "-c", script, "{input}", "{output}"])
    before = len(orthanc.results())
    listener = ListenerProcess(config, port).start()
    pid = None
    try:
        assert send(port, make_study(tmp_path / "s", seed=5100 if killed == "listener" else 5101)) == [SUCCESS] * 3
        pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 30, "the app to start"))
        wait_for(lambda: b"listener_app" in Path(f"/proc/{pid}/cmdline").read_bytes(), 10, "the app's exec")
        assert b"ONCOPLAN_JOB" not in Path(f"/proc/{pid}/environ").read_bytes()
        if killed == "listener_and_supervisor":  # neither can end anything: as after a power cut of the tree
            os.kill(listener.proc.pid, signal.SIGSTOP)
            os.kill(session_of(pid), signal.SIGKILL)
        listener.kill9()
        time.sleep(2.0)
        if killed == "listener":
            assert not alive(pid), "the app that cleared its environment outlived the listener"
        else:
            assert alive(pid)
        listener.start()
        wait_for(lambda: not alive(pid), 5, "the restart to end the app that cleared its environment")
        wait_for(lambda: len(orthanc.results()) == before + 1, 60, "the result of the rerun")
    finally:
        listener.stop()
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert len(ledger.read_text().split()) == 1
    assert rows(tmp_path / "spool", "SELECT state, attempts FROM jobs") == [("done", 2)]


# --- one listener per spool ---------------------------------------------------------------------------
def test_a_second_listener_on_the_same_spool_exits_at_once_and_disturbs_nothing(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    """Started by mistake on the live listener's configuration, a second `oncoplan listen` exits with
    status 2 and one line naming the holder, before it touches the spool: the running job goes on (not
    ended as interrupted, not run twice), an instance being received stays where it is."""
    port, started, spool = free_port(), tmp_path / "started", tmp_path / "spool"
    command = ["sh", "-c", f'echo x >> "{started}"; exec "{sys.executable}" "{APP}" "$0" "$1" --sleep 4']
    config = with_route(listener_config(tmp_path, port, orthanc), command=[*command, "{input}", "{output}"])
    before = len(orthanc.results())
    listener = ListenerProcess(config, port).start()
    try:
        assert send(port, make_study(tmp_path / "s", seed=5200)) == [SUCCESS] * 3
        wait_for(started.exists, 30, "the job to start")
        arriving = spool / "receiving" / "tmp-arriving.dcm"  # as pynetdicom writes an instance arriving now
        arriving.write_bytes(b"\0" * 4096)
        second = subprocess.run(
            [sys.executable, "-m", "oncoplan", "listen", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2, second.stderr[-2000:]
        assert len(lines) == 1 and "another listener" in lines[0] and f"pid {listener.proc.pid}" in lines[0], lines
        assert arriving.exists()
        assert rows(spool, "SELECT state, attempts FROM jobs") == [("running", 1)]
        wait_for(lambda: len(orthanc.results()) == before + 1, 60, "the result")
    finally:
        listener.stop()
    assert started.read_text().split() == ["x"]
    assert rows(spool, "SELECT state, attempts FROM jobs") == [("done", 1)]


# --- a result the destination will never take ----------------------------------------------------------
UNKNOWN_APP = """
import sys, pydicom
from pathlib import Path
from pydicom.uid import generate_uid
inp, out = Path(sys.argv[1]), Path(sys.argv[2])
ds = pydicom.dcmread(sorted(inp.rglob("*.dcm"))[0])
ds.SeriesInstanceUID, ds.SeriesDescription = generate_uid(), "RESULT research use only"
if sys.argv[3] == "beside":
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(out / "good.dcm", enforce_file_format=True)
ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.10.555.1"  # a private class
ds.save_as(out / "unknown.dcm", enforce_file_format=True)
"""


@pytest.mark.parametrize("alone", [True, False], ids=["alone", "beside_an_accepted_result"])
def test_a_result_whose_presentation_context_the_destination_refuses_fails_for_good_and_the_study_is_purged(
    tmp_path: Path, orthanc: Orthanc, capfd: pytest.CaptureFixture, alone: bool
) -> None:
    """Orthanc refuses the presentation context of a private SOP class (alone in the association,
    pynetdicom aborts it: no accepted context; beside an accepted result, the store has no context): the
    result is recorded failed for good, counted, with one line saying why, not retried for ever as
    "destination unreachable", and the study's retention purge goes on."""
    port, spool, script = free_port(), tmp_path / "spool", tmp_path / "unknown_app.py"
    script.write_text(UNKNOWN_APP)
    config = listener_config(tmp_path, port, orthanc, retention_days=1 / 86400)
    mode = "alone" if alone else "beside"
    with_route(config, command=[sys.executable, str(script), "{input}", "{output}", mode])
    logs.setup()
    capfd.readouterr()
    with running(config) as listener:
        assert send(port, make_study(tmp_path / "s", seed=5300 if alone else 5301)) == [SUCCESS] * 3
        expected = [("failed",)] if alone else [("failed",), ("sent",)]
        wait_for(lambda: sorted(rows(spool, "SELECT state FROM deliveries")) == expected, 30, "the outcomes")
        wait_for(lambda: listener.purge_finished() == 1, 20, "the study's retention purge")
    found, _ = events(capfd)
    refused = [e for e in found if e["event"] == "result_not_sent"]
    assert len(refused) == 1 and refused[0]["final"] and refused[0]["level"] == "error", refused
    assert "refused the result's presentation context" in refused[0]["error"], refused
    assert "abstract syntax not supported" in refused[0]["error"], refused
    assert rows(spool, "SELECT n FROM counters WHERE name = 'deliveries_failed'") == [(1,)]
    assert not (spool / "incoming").exists() or not list((spool / "incoming").rglob("*.dcm"))


# --- what an app prints stays in its job folder ------------------------------------------------------------
FAILING_APP = """
import sys, pydicom
from pathlib import Path
ds = pydicom.dcmread(sorted(Path(sys.argv[1]).rglob("*.dcm"))[0])
print(f"no usable series in the study of {ds.PatientName} (ID {ds.PatientID})", file=sys.stderr)
sys.exit(2)
"""


def test_a_failing_apps_output_never_reaches_the_listeners_log(
    tmp_path: Path, orthanc: Orthanc, capfd: pytest.CaptureFixture
) -> None:
    """An app that fails naming the patient: the job_failed line gives the status and where the app's
    log is (the job folder), which keeps what it printed; the name and ID are in no log line."""
    port, spool, script = free_port(), tmp_path / "spool", tmp_path / "failing_app.py"
    script.write_text(FAILING_APP)
    config = listener_config(tmp_path, port, orthanc, max_attempts=1)
    with_route(config, command=[sys.executable, str(script), "{input}", "{output}"])
    logs.setup()
    capfd.readouterr()
    with running(config):
        assert send(port, make_study(tmp_path / "s", seed=5400, patient="Leak^Lena")) == [SUCCESS] * 3
        wait_for(lambda: rows(spool, "SELECT state FROM jobs") == [("failed",)], 30, "the job to fail")
    found, err = events(capfd)
    failed = [e for e in found if e["event"] == "job_failed"]
    assert len(failed) == 1 and "status 2" in failed[0]["error"], failed
    assert str(spool / "jobs" / "1") in failed[0]["error"] and "app.log" in failed[0]["error"], failed
    assert "Leak^Lena" not in err and "P05400" not in err
    assert "Leak^Lena" in (spool / "jobs" / "1" / "app.log").read_text()  # kept where a person can read it


# --- a destination that is down is one line ----------------------------------------------------------------
def test_a_delivery_to_a_destination_that_is_down_is_one_line_with_the_connection_error(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    """The destination refuses the TCP connection: the result_not_sent line says so, with pynetdicom's own
    reason in it, and pynetdicom's two error lines about it are not lines of their own."""
    port, closed, spool = free_port(), free_port(), tmp_path / "spool"
    config = listener_config(tmp_path, port, orthanc, max_backoff_s=30.0, retry_backoff_s=30.0)
    raw = yaml.safe_load(config.read_text())
    raw["destinations"]["pacs"]["port"] = closed  # nothing listens there
    config.write_text(yaml.safe_dump(raw))
    lines = listener_logs()
    with running(config):
        assert send(port, make_study(tmp_path / "s", seed=5500)) == [SUCCESS] * 3
        wait_for(lambda: rows(spool, "SELECT state FROM jobs") == [("done",)], 60, "the job")
        failed = wait_for(
            lambda: [e for e in log_events(lines) if e["event"] == "result_not_sent"], 30, "the delivery's line"
        )
    assert len(failed) == 1 and not failed[0]["final"], failed
    assert "destination unreachable" in failed[0]["error"] and "Connection refused" in failed[0]["error"], failed
    assert not [e for e in log_events(lines) if e["event"] == "library_message"], log_events(lines)
