"""The deployment files are consistent with the listener: they parse, their listener configurations
load with the listener's own loader, and the Job template has every placeholder the script fills.
(No engine or cluster runs here; see deploy/README.md.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from oncoplan.deploy.listener.config import load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_example_and_compose_configurations_load(tmp_path: Path) -> None:
    example = load_config(DEPLOY / "listener.example.yaml")
    assert {r.name for r in example.routes} == {"ctv", "tace"} and example.health_port == 8080
    compose = load_config(DEPLOY / "compose" / "listener.yaml")
    assert all("{input}:/var/holoscan/input:ro" in r.command for r in compose.routes)
    # A killed `docker run` leaves its container: each route names it after the job and stops it by name.
    assert all("oncoplan-job-{job}" in r.command and r.stop[-1] == "oncoplan-job-{job}" for r in compose.routes)
    services = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())["services"]
    assert set(services) == {"orthanc", "listener"}
    assert "/srv/oncoplan/spool:/srv/oncoplan/spool" in services["listener"]["volumes"]


def test_kubernetes_manifests_and_job_script(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "listener.yaml").read_text()))
    kinds = {d["kind"] for d in docs}
    assert kinds == {
        "PersistentVolumeClaim",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
    }
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["listener.yaml"]
    (tmp_path / "listener.yaml").write_text(config)
    loaded = load_config(tmp_path / "listener.yaml")
    script = DEPLOY / "k8s" / "run-map-job.sh"
    assert all(r.command[0] == f"/opt/oncoplan/deploy/k8s/{script.name}" for r in loaded.routes)
    # The Job is named from the listener's job id, so the route's stop command deletes that Job.
    assert all("{job}" in r.command and r.stop[1:] == ("--stop", r.command[1], "{job}") for r in loaded.routes)
    template = (DEPLOY / "k8s" / "map-job.template.yaml").read_text()
    assert all(
        f"s|{t}|" in script.read_text() and t in template for t in ("__NAME__", "__IMAGE__", "__INPUT__", "__OUTPUT__")
    )
    yaml.safe_load(template.replace("__", "x"))
    subprocess.run(["bash", "-n", str(script)], check=True)
