"""The node's metrics, /healthz, worker events, restart policy and configuration checks."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetinfer.errors import ConfigError
from fleetinfer.node.agent import NodeConfig
from fleetinfer.node.events import MAX_EVENT_BYTES, PipeEvents, encode_event, read_events
from fleetinfer.node.health import HealthServer
from fleetinfer.node.metrics import NodeMetrics
from fleetinfer.node.supervisor import RestartPolicy


@pytest.fixture
def metrics() -> NodeMetrics:
    return NodeMetrics()


@pytest.fixture
def server(metrics: NodeMetrics) -> Iterator[tuple[HealthServer, dict[str, Any]]]:
    state: dict[str, Any] = {"healthy": True}
    health = HealthServer(
        host="127.0.0.1",
        port=0,
        metrics=metrics.exposition,
        health=lambda: (state["healthy"], {"status": "ok" if state["healthy"] else "draining"}),
    ).start()
    yield health, state
    health.stop()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def test_metrics_count_outcomes_and_observe_durations(
    metrics: NodeMetrics, server: tuple[HealthServer, dict[str, Any]]
) -> None:
    metrics.record_event(
        {"event": "task", "outcome": "succeeded", "task": "square", "duration_s": 0.02}
    )
    metrics.record_event({"event": "task", "outcome": "dead", "task": "square", "duration_s": 1.0})
    metrics.record_event({"event": "abandoned"})
    metrics.record_event({"event": "ready"})
    status, body = _get(server[0].url + "/metrics")
    text = body.decode()
    assert status == 200
    assert 'fleetinfer_tasks_total{outcome="succeeded"} 1.0' in text
    assert 'fleetinfer_tasks_total{outcome="abandoned"} 1.0' in text
    assert 'fleetinfer_task_duration_seconds_count{task="square"} 2.0' in text
    assert metrics.outcome_counts()["dead"] == 1


def test_healthz_is_200_while_healthy_and_503_when_draining(
    server: tuple[HealthServer, dict[str, Any]],
) -> None:
    health, state = server
    assert _get(health.url + "/healthz") == (200, b'{"status": "ok"}')
    state["healthy"] = False
    status, body = _get(health.url + "/healthz")
    assert (status, json.loads(body)) == (503, {"status": "draining"})
    assert _get(health.url + "/other")[0] == 404


def test_a_busy_port_is_a_config_error(server: tuple[HealthServer, dict[str, Any]]) -> None:
    with pytest.raises(ConfigError, match="choose another --metrics-port"):
        HealthServer(
            host="127.0.0.1", port=server[0].port, metrics=bytes, health=lambda: (True, {})
        )


def test_events_travel_as_json_lines_through_a_pipe() -> None:
    read_fd, write_fd = os.pipe()
    sink = PipeEvents(write_fd)
    sink.emit("ready", pid=1)
    sink.emit("task", outcome="succeeded", duration_s=0.5)
    os.write(write_fd, b"not json\n")
    os.close(write_fd)
    got: list[dict[str, Any]] = []
    read_events(read_fd, got.append)
    assert got == [
        {"event": "ready", "pid": 1},
        {"event": "task", "outcome": "succeeded", "duration_s": 0.5},
    ]


def test_a_huge_event_is_cut_to_one_atomic_line() -> None:
    line = encode_event("error", {"message": "x" * 100_000})
    assert len(line) <= MAX_EVENT_BYTES + 1
    assert line.endswith(b"\n")
    assert json.loads(line)["message"] == "x" * 200


def test_restart_delay_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(base_s=0.5, max_s=3.0)
    assert [policy.delay_s(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(ConfigError, match="0 <= base <= max"):
        RestartPolicy(base_s=5.0, max_s=1.0)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"grace_s": -1.0}, "grace_s must be >= 0"),
        ({"workers": 0}, "workers must be at least 1"),
        ({"metrics_port": 70000}, "metrics port must be 0..65535"),
        ({"worker_nice": 20}, "worker niceness must be 0..19"),
    ],
)
def test_bad_node_settings_are_config_errors(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        NodeConfig(target="tests.apps.jobs:app", **options)


def test_workers_give_up_held_tasks_a_little_before_the_agent_would_kill_them() -> None:
    config = NodeConfig(target="m:a", grace_s=100.0, models=Path("/models"))
    worker = config.worker_config()
    assert worker.grace_s == 99.0
    assert worker.models == "/models"
    assert NodeConfig(target="m:a", grace_s=2.0).worker_config().grace_s == pytest.approx(1.6)
    assert NodeConfig(target="m:a", grace_s=2.0).kill_after_s == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("client_mode", "worker_nice", "expected"),
    [("inprocess", None, 0), ("shared", None, 10), ("triton", None, 10), ("shared", 0, 0)],
)
def test_workers_run_below_the_model_server_they_feed_unless_told_otherwise(
    client_mode: str, worker_nice: int | None, expected: int
) -> None:
    config = NodeConfig(target="m:a", client_mode=client_mode, worker_nice=worker_nice)
    assert config.worker_config().nice == expected
