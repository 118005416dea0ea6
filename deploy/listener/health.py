"""Health and metrics over HTTP: /health (liveness), /metrics (Prometheus text), /status (JSON)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def prometheus(status: dict) -> str:
    lines = []
    for table in ("studies", "jobs", "deliveries"):
        lines.append(f"# TYPE oncoplan_{table} gauge")
        lines += [f'oncoplan_{table}{{state="{s}"}} {n}' for s, n in sorted(status["counts"].get(table, {}).items())]
    lines += [
        "# TYPE oncoplan_instances_received counter",
        f"oncoplan_instances_received {status['counts']['instances']['received']}",
        *(
            line
            for name, n in sorted(status["counts"].get("events", {}).items())
            for line in (f"# TYPE oncoplan_{name} counter", f"oncoplan_{name} {n}")
        ),
        "# TYPE oncoplan_spool_free_bytes gauge",
        f"oncoplan_spool_free_bytes {status['spool_free_bytes']}",
        "# TYPE oncoplan_associations_open gauge",
        f"oncoplan_associations_open {status['associations_open']}",
    ]
    for name, value in sorted(status["latency"].items()):
        lines += [f"# TYPE oncoplan_{name} gauge", f"oncoplan_{name} {value:.3f}"]
    return "\n".join(lines) + "\n"


def serve(host: str, port: int, status: Callable[[], dict]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                body, kind = b'{"status": "ok"}', "application/json"
            elif self.path == "/metrics":
                body, kind = prometheus(status()).encode(), "text/plain; version=0.0.4"
            elif self.path == "/status":
                body, kind = json.dumps(status(), indent=1).encode(), "application/json"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # quiet: the listener logs its own events
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
