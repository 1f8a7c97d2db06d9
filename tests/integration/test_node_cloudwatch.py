"""A `fleetinfer run` node on a Redis queue publishes its queue depths to CloudWatch (the tests'
moto server), keeps working when CloudWatch cannot be reached, and does not start without boto3."""

from __future__ import annotations

import datetime
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from fleetinfer.cli.common import ExitCode
from fleetinfer.node.cloudwatch import BACKLOG_METRIC, STATE_METRICS
from fleetinfer.queue import open_broker
from fleetinfer.queue.base import Broker
from fleetinfer.results import open_store
from fleetinfer.task import send_tasks
from tests.apps.harness import REPO_ROOT, NodeProcess, wait_for

ERRORS = re.compile(r"^fleetinfer_cloudwatch_publish_errors_total (\S+)$", re.MULTILINE)


@pytest.fixture
def queue(redis_url: str, unique_name: str) -> Iterator[tuple[str, Broker]]:
    url = f"{redis_url}?queue={unique_name}&visibility_timeout_s=120"
    with open_broker(url) as broker:
        try:
            yield url, broker
        finally:
            broker.purge()


def _latest(endpoint: str, namespace: str, name: str, queue: str) -> float | None:
    """The greatest value published in the latest second that holds one (None: nothing yet)."""
    cloudwatch = boto3.client("cloudwatch", endpoint_url=endpoint, region_name="us-east-1")
    now = datetime.datetime.now(datetime.UTC)
    points = cloudwatch.get_metric_statistics(
        Namespace=namespace, MetricName=name, Dimensions=[{"Name": "Queue", "Value": queue}],
        StartTime=now - datetime.timedelta(minutes=10), EndTime=now + datetime.timedelta(minutes=1),
        Period=1, Statistics=["Maximum"],
    )["Datapoints"]  # fmt: skip
    if not points:
        return None
    value: float = max(points, key=lambda p: p["Timestamp"])["Maximum"]
    return value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _publishing(endpoint: str, namespace: str) -> tuple[str, ...]:
    return (
        "--cloudwatch-namespace", namespace, "--cloudwatch-region", "us-east-1",
        "--cloudwatch-endpoint-url", endpoint, "--cloudwatch-interval-s", "1",
    )  # fmt: skip


def test_a_node_publishes_the_backlog_of_its_queue_and_what_it_leaves_at_stop(
    queue: tuple[str, Broker], moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    url, broker = queue
    send_tasks(broker, "nap", [{"s": 600}] * 6)  # one runs, five wait: a backlog of 6
    node = NodeProcess("tests.apps.jobs:app", url, f"sqlite:///{tmp_path}/r.db",
                       "--workers", "1", "--grace-s", "2", *_publishing(moto_endpoint, unique_name),
                       log_path=tmp_path / "node.log")  # fmt: skip
    try:
        wait_for(lambda: broker.stats().in_flight == 1, 60, "a task in flight")
        wait_for(
            lambda: _latest(moto_endpoint, unique_name, "QueueInFlight", unique_name) == 1,
            30, "a reading with the task in flight",
        )  # fmt: skip
        depth = broker.stats()
        assert _latest(moto_endpoint, unique_name, BACKLOG_METRIC, unique_name) == depth.pending
        assert depth.pending == 6
        assert _latest(moto_endpoint, unique_name, "QueueVisible", unique_name) == depth.visible
        listed = boto3.client(
            "cloudwatch", endpoint_url=moto_endpoint, region_name="us-east-1"
        ).list_metrics(Namespace=unique_name)["Metrics"]
        assert sorted(m["MetricName"] for m in listed) == sorted(
            [BACKLOG_METRIC, *STATE_METRICS.values()]
        )
        assert all(m["Dimensions"] == [{"Name": "Queue", "Value": unique_name}] for m in listed)
        assert ERRORS.search(node.metrics()).group(1) == "0.0"  # type: ignore[union-attr]
        node.terminate()
        assert node.wait(30) == ExitCode.DRAIN_INCOMPLETE, node.log()  # the nap was released
    finally:
        node.close()
    assert broker.stats().visible == 6
    assert _latest(moto_endpoint, unique_name, "QueueVisible", unique_name) == 6  # after release


def test_an_unreachable_cloudwatch_leaves_the_node_working_and_counts_the_failures(
    queue: tuple[str, Broker], tmp_path: Path, unique_name: str
) -> None:
    url, broker = queue
    results = f"sqlite:///{tmp_path}/r.db"
    send_tasks(broker, "square", [{"x": i, "work_ms": 5} for i in range(40)])
    nowhere = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    node = NodeProcess("tests.apps.jobs:app", url, results, "--workers", "2",
                       *_publishing(nowhere, unique_name), log_path=tmp_path / "node.log")  # fmt: skip
    try:
        with open_store(results) as store:
            wait_for(lambda: store.count() == 40, 60, "every task's result")

        def failures() -> float:
            found = ERRORS.search(node.metrics())
            assert found is not None, node.metrics()
            return float(found.group(1))

        wait_for(lambda: failures() >= 3, 30, "three failed publishes")
        assert node.health()["status"] == "ok"
        node.terminate()
        assert node.wait(30) == ExitCode.OK, node.log()
    finally:
        node.close()
    assert broker.stats().pending == 0
    log = (tmp_path / "node.log").read_text()
    warnings = [line for line in log.splitlines() if "cannot publish queue depths" in line]
    assert len(warnings) == 1, log  # one per streak of failures
    assert "Could not connect to the endpoint URL" in warnings[0]


def test_a_node_asked_to_publish_without_boto3_stops_at_once_naming_the_extra(
    tmp_path: Path, unique_name: str
) -> None:
    hidden = tmp_path / "no-boto3"
    hidden.mkdir()
    (hidden / "boto3.py").write_text("raise ImportError('boto3 is hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hidden), str(REPO_ROOT)]))
    done = subprocess.run(
        [sys.executable, "-m", "fleetinfer", "run", "tests.apps.jobs:app",
         "--queue", f"sqlite:///{tmp_path}/q.db", "--results", f"sqlite:///{tmp_path}/r.db",
         "--cloudwatch-namespace", unique_name],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == ExitCode.CONFIG, done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr  # one line
    assert "CloudWatch" in done.stderr
    assert "pip install 'fleetinfer[sqs]'" in done.stderr
    assert not (tmp_path / "q.db").exists()  # stopped before it opened the queue
