"""The node's Prometheus metrics, in a registry of its own (never the process-global one).

Workers report each task on their event pipe; the agent counts here:

    fleetinfer_tasks_total{outcome}              succeeded | failed | retried | dead | rejected |
                                                 malformed | duplicate | abandoned | unserved
    fleetinfer_task_duration_seconds{task}       histogram, receive to settle
    fleetinfer_workers_alive                     worker processes running now
    fleetinfer_worker_restarts_total             crashed workers started again
    fleetinfer_node_draining                     1 once a drain (SIGTERM, spot notice) began

With a queue (`watch_queue`) the depth gauges of `queue_metrics.py` join them, and with a model
server (`add_scrape`) its `nv_inference_*` metrics are appended to the same exposition. A node
that publishes its queue depths to CloudWatch (`cloudwatch.py`) adds

    fleetinfer_cloudwatch_publish_errors_total   PutMetricData calls that failed
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fleetinfer.queue.base import Broker

if TYPE_CHECKING:
    from fleetinfer.node.queue_metrics import QueueCollector

log = logging.getLogger("fleetinfer.node")
SCRAPE_TIMEOUT_S = 1.0

OUTCOMES = (
    "succeeded",
    "failed",
    "retried",
    "dead",
    "rejected",
    "malformed",
    "duplicate",
    "abandoned",
    "unserved",
)
DURATION_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
)


class NodeMetrics:
    """Counters, gauges and a histogram for one node."""

    def __init__(self) -> None:
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=True)
        self.tasks = Counter(
            "fleetinfer_tasks", "Tasks settled, by outcome.", ["outcome"], registry=self.registry
        )
        for outcome in OUTCOMES:
            self.tasks.labels(outcome)
        self.duration = Histogram(
            "fleetinfer_task_duration_seconds",
            "Time from receive to settle, by task.",
            ["task"],
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )
        self.workers_alive = Gauge(
            "fleetinfer_workers_alive", "Worker processes running.", registry=self.registry
        )
        self.restarts = Counter(
            "fleetinfer_worker_restarts", "Crashed workers started again.", registry=self.registry
        )
        self.draining = Gauge(
            "fleetinfer_node_draining", "1 once the node is draining.", registry=self.registry
        )
        self._scrapes: list[Callable[[], str | None]] = []

    def watch_queue(self, broker: Broker) -> QueueCollector:
        """Export the queue's depths and the age of its oldest message (read on each scrape);
        the collector is returned for whatever else reads the depths (CloudWatch)."""
        from fleetinfer.node.queue_metrics import QueueCollector

        collector = QueueCollector(broker)
        self.registry.register(collector)
        return collector

    def add_scrape(self, url: Callable[[], str | None]) -> None:
        """Append what `url()` serves (another process's /metrics, e.g. the model server's) to
        this exposition; None or an unreachable endpoint adds nothing."""
        self._scrapes.append(url)

    def record_event(self, event: dict[str, Any]) -> None:
        """Count one worker event (`task` and `abandoned`; others are ignored)."""
        if event["event"] == "abandoned":
            self._count("abandoned")
            return
        if event["event"] != "task":
            return
        self._count(str(event.get("outcome", "")))
        duration_s = event.get("duration_s")
        if isinstance(duration_s, int | float) and event.get("task"):
            self.duration.labels(str(event["task"])).observe(float(duration_s))

    def _count(self, outcome: str) -> None:
        if outcome in OUTCOMES:
            self.tasks.labels(outcome).inc()
            with self._lock:
                self._counts[outcome] += 1

    def outcome_counts(self) -> dict[str, int]:
        """Tasks per outcome so far."""
        with self._lock:
            return dict(self._counts)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes: the node's metrics, then its scrapes'."""
        parts = [generate_latest(self.registry)]
        for url in self._scrapes:
            parts.append(_scrape(url()))
        return b"".join(parts)


def _scrape(url: str | None) -> bytes:
    if url is None:
        return b""
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as reply:
            body: bytes = reply.read()
    except OSError as exc:
        log.debug("cannot scrape %s: %s", url, exc)
        return b""
    return body if body.endswith(b"\n") or not body else body + b"\n"
