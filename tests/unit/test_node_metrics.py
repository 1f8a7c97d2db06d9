"""The node's /metrics: outcomes (unserved among them), the queue's depth gauges, merged scrapes."""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

from fleetinfer.node.metrics import NodeMetrics
from fleetinfer.queue import open_broker
from fleetinfer.queue.placed import PlacedBroker


def test_a_task_released_for_a_model_the_node_lacks_is_counted_as_unserved() -> None:
    metrics = NodeMetrics()
    metrics.record_event({"event": "task", "outcome": "unserved", "task": "t", "duration_s": 0.1})
    assert metrics.outcome_counts()["unserved"] == 1
    assert 'fleetinfer_tasks_total{outcome="unserved"} 1.0' in metrics.exposition().decode()


def test_queue_gauges_show_each_state_and_the_oldest_message_age(tmp_path: Path) -> None:
    metrics = NodeMetrics()
    with open_broker(f"sqlite:///{tmp_path}/q.db?queue=segments") as broker:
        broker.send_batch([1, 2, 3])
        broker.send(4, delay_s=60)
        [taken] = broker.receive()
        broker.dead_letter(taken.receipt, "bad")
        time.sleep(0.2)
        metrics.watch_queue(broker)
        text = metrics.exposition().decode()
    assert 'fleetinfer_queue_messages{queue="segments",state="visible"} 2.0' in text
    assert 'fleetinfer_queue_messages{queue="segments",state="delayed"} 1.0' in text
    assert 'fleetinfer_queue_messages{queue="segments",state="dead"} 1.0' in text
    [age_line] = [
        line for line in text.splitlines() if line.startswith("fleetinfer_queue_oldest_message")
    ]
    assert float(age_line.rsplit(" ", 1)[1]) >= 0.2


def test_the_gauges_of_a_nodes_placed_queues_carry_the_base_queues_name(tmp_path: Path) -> None:
    metrics = NodeMetrics()
    with open_broker(f"sqlite:///{tmp_path}/q.db?queue=segments") as broker:
        broker.send_batch([1, 2])
        metrics.watch_queue(PlacedBroker(broker, {}))  # what the agent watches
        text = metrics.exposition().decode()
    assert 'fleetinfer_queue_messages{queue="segments",state="visible"} 2.0' in text


def test_another_processs_metrics_are_appended_and_a_dead_one_adds_nothing() -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'nv_inference_count{model="m",version="1"} 3.0'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        metrics = NodeMetrics()
        metrics.add_scrape(lambda: f"http://127.0.0.1:{server.server_address[1]}/metrics")
        metrics.add_scrape(lambda: "http://127.0.0.1:1/metrics")  # nothing listens
        metrics.add_scrape(lambda: None)  # no server (yet)
        text = metrics.exposition().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert text.endswith('nv_inference_count{model="m",version="1"} 3.0\n')
    assert "fleetinfer_workers_alive" in text
