"""The Grafana dashboard in deploy/grafana/ names only metrics a node really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from fleetinfer.node.metrics import NodeMetrics
from fleetinfer.queue import open_broker
from fleetinfer.server.metrics import StatsBook

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "fleetinfer-node.json"
METRIC = re.compile(r"\b((?:fleetinfer|nv)_[a-z_]+)\b")


def dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return {name for expr in exprs for name in METRIC.findall(expr)}


def exported_samples(tmp_path: Path) -> set[str]:
    """Sample names of a node's /metrics with a queue, one settled task and a model server."""
    metrics = NodeMetrics()
    with open_broker(f"sqlite:///{tmp_path}/q.db") as broker:
        broker.send({"n": 1})
        metrics.watch_queue(broker)
        metrics.record_event(
            {"event": "task", "outcome": "succeeded", "task": "t", "duration_s": 1}
        )
        node_text = metrics.exposition().decode()
    book = StatsBook()
    book.get("m", 1).executed(requests=1, samples=1, queue_us=1, compute_us=1)
    registry = CollectorRegistry()
    registry.register(book)  # type: ignore[arg-type]  # the server's duck-typed collector
    text = node_text + generate_latest(registry).decode()
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_every_metric_the_dashboard_names_is_exported(tmp_path: Path) -> None:
    named = dashboard_metrics()
    assert {"fleetinfer_queue_messages", "nv_inference_count"} <= named
    missing = named - exported_samples(tmp_path)
    assert not missing, f"the dashboard names metrics no node exports: {sorted(missing)}"


def test_every_panel_has_a_query_and_a_unique_id() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert all(panel["targets"] for panel in panels)
    assert len({panel["id"] for panel in panels}) == len(panels)
