"""Server metrics, named after Triton's `nv_inference_*` family, and the live / ready endpoints.

Counters are plain integers behind a lock (a few hundred nanoseconds per request) and are turned
into Prometheus samples only when `/metrics` is scraped. One HTTP server on 127.0.0.1 serves
`/metrics`, `/v2/health/live` and `/v2/health/ready` (also without the `/v2` prefix).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from fleetinfer.errors import ConfigError

COUNTERS: dict[str, str] = {
    "nv_inference_request_success": "Number of successful inference requests",
    "nv_inference_request_failure": "Number of failed inference requests",
    "nv_inference_count": "Number of inferences performed (one per sample in a batch)",
    "nv_inference_exec_count": "Number of model executions (batches) performed",
    "nv_inference_queue_duration_us": "Cumulative time requests spent waiting in the queue, in us",
    "nv_inference_compute_infer_duration_us": "Cumulative model execution time, in us",
}

SERVER_COUNTERS: dict[str, str] = {
    "fleetinfer_accept_errors": "Connections the server failed to accept (EMFILE, ENFILE, ...)",
    "fleetinfer_reload_failures": "Models a reload (SIGHUP or control) failed to bring up to date",
}


@dataclass
class ModelStats:
    """Cumulative counters of one model version."""

    model: str
    version: int
    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def executed(self, *, requests: int, samples: int, queue_us: int, compute_us: int) -> None:
        with self.lock:
            v = self.values
            v["nv_inference_request_success"] += requests
            v["nv_inference_count"] += samples
            v["nv_inference_exec_count"] += 1
            v["nv_inference_queue_duration_us"] += queue_us
            v["nv_inference_compute_infer_duration_us"] += compute_us

    def failed(self, requests: int = 1) -> None:
        with self.lock:
            self.values["nv_inference_request_failure"] += requests

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.values)


class StatsBook:
    """Every model version's stats, kept after unload so counters never go backwards."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, int], ModelStats] = {}
        self._lock = threading.Lock()
        self.server_values = dict.fromkeys(SERVER_COUNTERS, 0)  # not per model

    def count(self, name: str) -> None:
        """One more of a server-wide counter (`SERVER_COUNTERS`)."""
        with self._lock:
            self.server_values[name] += 1

    def get(self, model: str, version: int) -> ModelStats:
        with self._lock:
            key = (model, version)
            if key not in self._stats:
                self._stats[key] = ModelStats(model, version)
            return self._stats[key]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            stats = list(self._stats.values())
        for name, doc in COUNTERS.items():
            metric = Metric(name, doc, "counter")
            for s in stats:
                labels = {"model": s.model, "version": str(s.version)}
                metric.add_sample(name, labels, float(s.snapshot()[name]))
            yield metric
        for name, doc in SERVER_COUNTERS.items():
            metric = Metric(name, doc, "counter")
            metric.add_sample(name, {}, float(self.server_values[name]))
            yield metric


class HealthServer:
    """`/metrics` and live / ready on 127.0.0.1:`port` (0 = an ephemeral port)."""

    def __init__(self, stats: StatsBook, ready: Callable[[], bool], port: int = 0) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(stats)  # a duck-typed collector
        handler = _handler(registry, ready)
        try:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on 127.0.0.1:{port}: {exc.strerror}; choose another "
                "--metrics-port (0 = any free port, -1 = no metrics endpoint)"
            ) from exc
        self.httpd.daemon_threads = True
        self.port: int = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="fleetinfer-health", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


def _handler(registry: CollectorRegistry, ready: Callable[[], bool]) -> type[Any]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0].removeprefix("/v2")
            if path == "/metrics":
                self._reply(200, generate_latest(registry), "text/plain; version=0.0.4")
            elif path == "/health/live":
                self._reply(200, b"live\n")
            elif path == "/health/ready":
                ok = ready()
                self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._reply(404, b"not found: try /metrics, /v2/health/live, /v2/health/ready\n")

        def _reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # scrapes are frequent; access logs would drown the server log

    return Handler
