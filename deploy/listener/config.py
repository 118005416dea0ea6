"""The listener's configuration file (YAML or JSON), validated on load into typed, frozen records."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from oncoplan.errors import InputError

# The apps the listener knows by name: the command that runs one study (placeholders filled per job).
APP_PREFIX = (sys.executable, "-m", "oncoplan")
APP_COMMANDS = {
    # -v: the job's app.log keeps everything the app and its libraries log (a console shows less)
    "ctv": [*APP_PREFIX, "-v", "contour", "-i", "{input}", "-o", "{output}"],
    "tace": [*APP_PREFIX, "-v", "plan", "-i", "{input}", "-o", "{output}"],
}
APP_MODULES = {"ctv": "oncoplan.apps.ctv_contouring.app", "tace": "oncoplan.apps.tace_planner.app"}
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash or control chars


@dataclass(frozen=True)
class Peer:
    """A DICOM node we send to."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class Route:
    """Which studies run which app, and where its results go.

    `match` maps a DICOM keyword to a regular expression (case-insensitive, searched) that some
    series of the study must satisfy on every key; `input` is the whole study or only the
    matched series."""

    name: str
    command: tuple[str, ...]
    destination: str
    match: dict[str, str] = field(default_factory=dict)
    input: str = "study"
    timeout_s: float = 3600.0
    warm: str | None = None  # an app route's module: it runs in a warm worker that preloads it
    # Run after a job ended abnormally (timeout, or found running after a restart) and before it runs
    # again: ends what the command started outside its own process tree (a container, a cluster Job).
    stop: tuple[str, ...] = ()
    # Environment for the route's runs, e.g. {ONCOPLAN_SERIES_DESCRIPTION: "RT SIM"} (which series the app
    # prefers at this site), {ONCOPLAN_BACKENDS: torch}; set for each job, warm worker or not.
    env: tuple[tuple[str, str], ...] = ()

    def matches(self, series: dict[str, Any]) -> bool:
        return all(re.search(rx, str(series.get(key) or ""), re.IGNORECASE) for key, rx in self.match.items())


@dataclass(frozen=True)
class TLS:
    cert: Path
    key: Path
    ca: Path | None = None  # when set, callers must present a certificate signed by it


@dataclass(frozen=True)
class ListenerConfig:
    ae_title: str
    port: int
    spool: Path
    allowed_callers: tuple[str, ...]
    routes: tuple[Route, ...]
    destinations: dict[str, Peer]
    host: str = "0.0.0.0"
    quiet_period_s: float = 30.0
    min_free_mb: float = 500.0
    workers: int = 1
    receivers: int = 1  # processes that accept associations on the port (SO_REUSEPORT when > 1)
    max_attempts: int = 3
    retry_backoff_s: float = 30.0
    max_backoff_s: float = 600.0
    health_host: str = "127.0.0.1"
    health_port: int | None = None
    tls: TLS | None = None
    poll_s: float = 0.5
    retention_days: float = 7.0  # a finished, delivered study's files are deleted after this
    max_associations: int = 64  # at once, all callers together, per receiving process
    max_associations_per_peer: int = 16  # at once from one IP address (being set up included), per receiving process
    association_timeout_s: float = 15.0  # from TCP connect to an accepted association (TLS handshake included)
    pdu_timeout_s: float = 30.0  # a PDU that stops arriving part-way for this long ends the association
    max_instance_mb: float = 1024.0  # a larger instance ends its association (it is received into a file)
    quarantine_max_mb: float = 1024.0  # beyond this the reason is logged but the bytes are not kept
    quarantine_days: float = 30.0  # quarantined files are deleted after this

    @property
    def database(self) -> Path:
        return self.spool / "queue.sqlite"


def _ae(value: Any, where: str) -> str:
    if not isinstance(value, str) or not AE_TITLE.match(value.strip()):
        raise InputError(f"{where}: not a DICOM AE title (1-16 printable characters): {value!r}")
    return value.strip()


def _port(value: Any, where: str) -> int:
    if not isinstance(value, int) or not 0 <= value < 65536:
        raise InputError(f"{where}: not a TCP port: {value!r}")
    return value


def _route(raw: dict[str, Any], i: int, destinations: dict[str, Peer]) -> Route:
    where = f"routes[{i}]"
    if not isinstance(raw, dict) or "name" not in raw:
        raise InputError(f"{where}: needs a name")
    if ("app" in raw) == ("command" in raw):
        raise InputError(f"{where}: give exactly one of app ({'|'.join(APP_COMMANDS)}) or command")
    if "app" in raw:
        if raw["app"] not in APP_COMMANDS:
            raise InputError(f"{where}: unknown app {raw['app']!r} (known: {', '.join(APP_COMMANDS)})")
        command = APP_COMMANDS[raw["app"]] + [str(a) for a in raw.get("args", [])]
    else:
        command = [str(a) for a in raw["command"]]
    if not any("{input}" in a for a in command) or not any("{output}" in a for a in command):
        raise InputError(f"{where}: the command must contain {{input}} and {{output}}")
    env = raw.get("env") or {}
    if not isinstance(env, dict) or not all(ENV_NAME.match(str(k)) for k in env):
        raise InputError(f"{where}.env: a mapping of environment variable names (A-Z, 0-9, _) to values")
    stop = raw.get("stop") or []
    if not isinstance(stop, list) or not all(isinstance(a, str | int | float) for a in stop):
        raise InputError(f"{where}.stop: a command as a list of arguments (placeholder {{job}})")
    if raw.get("destination") not in destinations:
        raise InputError(f"{where}: destination {raw.get('destination')!r} is not in destinations")
    match = {str(k): str(v) for k, v in (raw.get("match") or {}).items()}
    for key, rx in match.items():
        try:
            re.compile(rx)
        except re.error as exc:
            raise InputError(f"{where}.match.{key}: bad regular expression ({exc})") from None
    warm = raw.get("warm", "app" in raw)
    if not isinstance(warm, bool):
        raise InputError(f"{where}: warm must be true or false")
    if warm and "app" not in raw:
        raise InputError(f"{where}: warm needs an app route (a command runs as its own process)")
    if raw.get("input", "study") not in ("study", "series"):
        raise InputError(f"{where}: input must be study or series")
    return Route(
        str(raw["name"]),
        tuple(command),
        raw["destination"],
        match,
        raw.get("input", "study"),
        float(raw.get("timeout_s", 3600)),
        APP_MODULES[raw["app"]] if warm else None,
        tuple(str(a) for a in stop),
        tuple((str(k), str(v)) for k, v in env.items()),
    )


def load_config(path: str | Path) -> ListenerConfig:
    """Read and validate the listener configuration; relative paths are relative to the file."""
    path = Path(path)
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read the listener configuration ({exc})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: the configuration must be a mapping")
    try:
        return _parse(raw, path.parent)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: missing or malformed setting ({exc})") from None


def _parse(raw: dict[str, Any], base: Path) -> ListenerConfig:
    destinations = {
        str(name): Peer(
            _ae(d["ae_title"], f"destinations.{name}"), str(d["host"]), _port(d["port"], f"destinations.{name}")
        )
        for name, d in (raw.get("destinations") or {}).items()
    }
    routes = tuple(_route(r, i, destinations) for i, r in enumerate(raw.get("routes") or []))
    if not routes:
        raise InputError("routes: at least one route is needed")
    callers = raw.get("allowed_callers")
    if not isinstance(callers, list) or not callers:
        raise InputError("allowed_callers: list the AE titles that may send (unknown callers are rejected)")
    tls = None
    if raw.get("tls"):
        t = raw["tls"]
        tls = TLS(base / t["cert"], base / t["key"], base / t["ca"] if t.get("ca") else None)
    health = raw.get("health") or {}
    numbers = {
        k: float(raw[k])
        for k in (
            "quiet_period_s",
            "min_free_mb",
            "retry_backoff_s",
            "max_backoff_s",
            "poll_s",
            "retention_days",
            "association_timeout_s",
            "pdu_timeout_s",
            "max_instance_mb",
            "quarantine_max_mb",
            "quarantine_days",
        )
        if k in raw
    }
    if any(v < 0 for v in numbers.values()):
        raise InputError("times and sizes must not be negative")
    workers, attempts = int(raw.get("workers", 1)), int(raw.get("max_attempts", 3))
    if workers < 1 or attempts < 1:
        raise InputError("workers and max_attempts must be at least 1")
    receivers = raw.get("receivers", 1)
    if not isinstance(receivers, int) or not 1 <= receivers <= 64:
        raise InputError(f"receivers: a whole number of processes from 1 to 64, not {receivers!r}")
    limits = {k: raw[k] for k in ("max_associations", "max_associations_per_peer") if k in raw}
    for name, value in limits.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 10000:
            raise InputError(f"{name}: a whole number of associations from 1 to 10000, not {value!r}")
    port = _port(raw.get("port", 11112), "port")
    if receivers > 1 and port == 0:
        raise InputError("receivers: more than one process needs a fixed port (port 0 picks one per process)")
    return ListenerConfig(
        ae_title=_ae(raw.get("ae_title", "ONCOPLAN"), "ae_title"),
        port=port,
        host=str(raw.get("host", "0.0.0.0")),
        spool=(base / str(raw["spool"])).absolute(),
        allowed_callers=tuple(_ae(c, "allowed_callers") for c in callers),
        routes=routes,
        destinations=destinations,
        workers=workers,
        receivers=receivers,
        max_attempts=attempts,
        health_host=str(health.get("host", "127.0.0.1")),
        health_port=_port(health["port"], "health.port") if "port" in health else None,
        tls=tls,
        **limits,
        **numbers,
    )
