"""The deployment files are consistent with the listener: they parse, their listener configurations
load with the listener's own loader, the Kubernetes manifests and the Job rendered for each app validate
against the Kubernetes schemas (offline, kubernetes-validate), and the Job template has every placeholder
the script fills. (No cluster runs here; the compose stack runs in tests/test_containers.py.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from oncoplan.deploy.listener.config import load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_example_and_compose_configurations_load(tmp_path: Path) -> None:
    example = load_config(DEPLOY / "listener.example.yaml")
    assert {r.name for r in example.routes} == {"ctv", "tace"} and example.health_port == 8080
    compose = load_config(DEPLOY / "compose" / "listener.yaml")
    # The compose listener runs both apps in warm workers inside its image (oncoplan package listener).
    assert {r.name: r.warm for r in compose.routes} == {
        "ctv": "oncoplan.apps.ctv_contouring.app",
        "tace": "oncoplan.apps.tace_planner.app",
    }
    services = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())["services"]
    assert set(services) == {"orthanc", "listener"}
    assert services["listener"]["image"] == "oncoplan-listener:latest"
    assert "spool:/var/lib/oncoplan/spool" in services["listener"]["volumes"]
    # Orthanc and the listener find each other by service name on the compose network.
    orthanc = json.loads((DEPLOY / "compose" / "orthanc.json").read_text())
    assert orthanc["DicomModalities"]["oncoplan"] == [compose.ae_title, "listener", compose.port]
    assert compose.destinations["pacs"].host == "orthanc"


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


K8S_VERSION = "1.30.0"  # the Kubernetes release whose schemas the manifests are checked against


def _k8s_errors(doc: dict) -> list[str]:
    """What kubernetes-validate (the Kubernetes OpenAPI schemas, shipped in the package: offline) finds
    wrong with one manifest, unknown fields included (strict)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}"]
    return []


def test_kubernetes_manifests_validate_against_the_kubernetes_schemas() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "listener.yaml").read_text()))
    assert [e for d in docs for e in _k8s_errors(d)] == []


@pytest.mark.parametrize("app", ["ctv", "tace"])
def test_map_job_template_renders_a_valid_job_for_each_app(app: str) -> None:
    """`run-map-job.sh --render` fills the template as the route does; the Job validates and mounts the job's
    folders of the spool claim at the MAP's input (read-only) and output, running as the MAP's user."""
    script = DEPLOY / "k8s" / "run-map-job.sh"
    args = [app, f"oncoplan-{app}:latest", "42", "/spool/jobs/42/input", "/spool/jobs/42/output"]
    r = subprocess.run(["bash", str(script), "--render", *args], capture_output=True, text=True, check=True)
    job = yaml.safe_load(r.stdout)
    assert _k8s_errors(job) == []
    assert job["kind"] == "Job" and job["metadata"]["name"] == f"oncoplan-{app}-42"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"oncoplan-{app}:latest"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/var/holoscan/input"]["subPath"] == "jobs/42/input" and mounts["/var/holoscan/input"]["readOnly"]
    assert mounts["/var/holoscan/output"]["subPath"] == "jobs/42/output"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 1000
