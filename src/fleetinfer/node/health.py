"""`/metrics` (Prometheus text), `/healthz` and `/readyz` (JSON) over HTTP, on 127.0.0.1 by default.

`/healthz` answers 200 while the node works and 503 once it drains, has no live worker, or its
model server stopped answering its probes, with a JSON body a load balancer or a test can read:
status, workers alive, their pids, restarts. `/readyz` (for orchestrators' readiness checks)
answers 200 only while the node can take work: started, not draining, workers alive, its model
server answering.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from fleetinfer.errors import ConfigError

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


class HealthServer:
    """A small threaded HTTP server; `port=0` picks a free port (read it from `.port`)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        metrics: Callable[[], bytes],
        health: HealthCheck,
        ready: HealthCheck | None = None,
    ) -> None:
        handler = _handler_class(metrics, {"/healthz": health, "/readyz": ready or health})
        self.host = host
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port} ({exc.strerror}): choose another "
                "--metrics-port, or 0 for a free one"
            ) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="fleetinfer-health",
            daemon=True,
        )

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _handler_class(
    metrics: Callable[[], bytes], checks: dict[str, HealthCheck]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            check = checks.get(path)
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, metrics())
            elif check is not None:
                healthy, body = check()
                self._send(200 if healthy else 503, "application/json", json.dumps(body).encode())
            else:
                self._send(404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would drown the node's log

    return Handler
