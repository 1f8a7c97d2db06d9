"""The node's CloudWatch publisher: its settings, the values it sends, and how it fails (against
the tests' moto server and a closed port; a Redis server of the test's own for a lost queue)."""

from __future__ import annotations

import datetime
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import boto3
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fleetinfer.config import load_settings, node_config
from fleetinfer.errors import BrokerUnavailableError, ConfigError, MissingExtraError
from fleetinfer.node.agent import NodeConfig
from fleetinfer.node.cloudwatch import (
    BACKLOG_METRIC,
    CloudWatchOptions,
    CloudWatchPublisher,
    metric_data,
    open_cloudwatch,
)
from fleetinfer.node.preflight import check_cloudwatch
from fleetinfer.node.queue_metrics import QueueCollector
from fleetinfer.queue import open_broker
from fleetinfer.queue.base import Broker, QueueStats

NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _datapoints(endpoint: str, namespace: str, name: str, queue: str) -> list[dict[str, Any]]:
    cloudwatch = boto3.client("cloudwatch", endpoint_url=endpoint, region_name="us-east-1")
    now = datetime.datetime.now(datetime.UTC)
    points: list[dict[str, Any]] = cloudwatch.get_metric_statistics(
        Namespace=namespace, MetricName=name, Dimensions=[{"Name": "Queue", "Value": queue}],
        StartTime=now - datetime.timedelta(minutes=10), EndTime=now + datetime.timedelta(minutes=1),
        Period=1, Statistics=["Maximum", "Minimum", "SampleCount"],
    )["Datapoints"]  # fmt: skip
    return points


def _errors(registry: CollectorRegistry) -> float:
    value = registry.get_sample_value("fleetinfer_cloudwatch_publish_errors_total")
    assert value is not None, generate_latest(registry).decode()
    return value


# -- the values ------------------------------------------------------------------------------


def test_the_backlog_is_visible_plus_in_flight_plus_delayed_and_each_state_is_sent_too() -> None:
    stats = QueueStats(visible=5, in_flight=3, delayed=2, dead=7)
    data = metric_data("segments", stats, storage_resolution_s=60, at=NOW)
    values = {d["MetricName"]: d["Value"] for d in data}
    assert values == {
        BACKLOG_METRIC: 10.0,  # the dead letters wait for a person, not for a node
        "QueueVisible": 5.0,
        "QueueInFlight": 3.0,
        "QueueDelayed": 2.0,
        "QueueDead": 7.0,
    }
    for datum in data:
        assert datum["Dimensions"] == [{"Name": "Queue", "Value": "segments"}]
        assert (datum["Unit"], datum["StorageResolution"], datum["Timestamp"]) == (
            "Count",
            60,
            NOW,
        )


@pytest.mark.parametrize(("interval_s", "resolution_s"), [(1, 1), (59.5, 1), (60, 60), (300, 60)])
def test_publishing_more_often_than_once_a_minute_is_high_resolution(
    interval_s: float, resolution_s: int
) -> None:
    options = CloudWatchOptions(namespace="Fleetinfer", interval_s=interval_s)
    assert options.storage_resolution_s == resolution_s


# -- the settings ----------------------------------------------------------------------------


def test_cloudwatch_settings_come_from_the_file_the_environment_and_flags(tmp_path: Path) -> None:
    (tmp_path / "fleetinfer.toml").write_text(
        '[node]\ntarget = "jobs:app"\ncloudwatch_namespace = "Fleetinfer"\n'
        'cloudwatch_region = "eu-west-1"\n'
    )
    env = {"FLEETINFER_CLOUDWATCH_INTERVAL_S": "10", "FLEETINFER_CLOUDWATCH_REGION": "us-east-2"}
    flags = {"cloudwatch_endpoint_url": "http://127.0.0.1:5000"}
    settings = load_settings(cwd=tmp_path, environ=env, overrides=flags)
    config = node_config(settings)
    assert config.cloudwatch == CloudWatchOptions(
        namespace="Fleetinfer",
        region="us-east-2",
        endpoint_url="http://127.0.0.1:5000",
        interval_s=10.0,
    )


def test_no_namespace_or_an_empty_one_publishes_nothing(tmp_path: Path) -> None:
    assert (
        node_config(load_settings(cwd=tmp_path, environ={}, overrides={"target": "a:b"})).cloudwatch
        is None
    )
    (tmp_path / "fleetinfer.toml").write_text('[node]\ntarget = "a:b"\ncloudwatch_namespace = ""\n')
    settings = load_settings(cwd=tmp_path, environ={})
    assert settings.cloudwatch_interval_s == 60.0
    assert node_config(settings).cloudwatch is None


def test_bad_cloudwatch_settings_are_reported_at_once_each_with_its_key(tmp_path: Path) -> None:
    (tmp_path / "fleetinfer.toml").write_text(
        '[node]\ncloudwatch_namespace = "AWS/SQS"\ncloudwatch_interval_s = 0.5\n'
    )
    env = {"FLEETINFER_CLOUDWATCH_REGION": "US East 1"}
    flags = {"cloudwatch_endpoint_url": "monitoring.amazonaws.com"}
    with pytest.raises(ConfigError) as caught:
        load_settings(cwd=tmp_path, environ=env, overrides=flags)
    message = str(caught.value)
    assert message.startswith("invalid configuration (4 errors): ")
    assert "node.cloudwatch_namespace: a CloudWatch namespace must not start with AWS/" in message
    assert "node.cloudwatch_interval_s: Expected float >= 1.0 (got 0.5)" in message
    assert "FLEETINFER_CLOUDWATCH_REGION: expected an AWS region name" in message
    assert "--cloudwatch-endpoint-url: expected an http(s) URL" in message


@pytest.mark.parametrize("namespace", ["has;semicolon", "x" * 256, "   ", ":leading"])
def test_a_namespace_cloudwatch_would_refuse_is_refused_here(
    namespace: str, tmp_path: Path
) -> None:
    with pytest.raises(
        ConfigError, match=r"FLEETINFER_CLOUDWATCH_NAMESPACE: .*CloudWatch namespace"
    ):
        load_settings(None, environ={"FLEETINFER_CLOUDWATCH_NAMESPACE": namespace}, cwd=tmp_path)


def test_config_show_masks_a_password_in_the_endpoint(tmp_path: Path) -> None:
    settings = load_settings(
        None, environ={"FLEETINFER_CLOUDWATCH_ENDPOINT_URL": "https://u:pw@vpce.example.com"},
        cwd=tmp_path,
    )  # fmt: skip
    assert settings.masked()["cloudwatch_endpoint_url"] == "https://u:***@vpce.example.com"


# -- at start --------------------------------------------------------------------------------


def test_without_boto3_the_node_stops_before_it_starts_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    config = NodeConfig(target="a:b", cloudwatch=CloudWatchOptions(namespace="Fleetinfer"))
    with pytest.raises(MissingExtraError, match=r"CloudWatch.*fleetinfer\[sqs\]"):
        check_cloudwatch(config)
    assert check_cloudwatch(NodeConfig(target="a:b")) is None  # not asked for: not needed


def test_without_a_region_the_node_stops_before_it_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for variable in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match=r"no AWS region is known: set node\.cloudwatch_region"):
        open_cloudwatch(CloudWatchOptions(namespace="Fleetinfer"))


# -- publishing ------------------------------------------------------------------------------


def test_a_publish_sends_the_depths_the_metrics_endpoint_reads(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    options = CloudWatchOptions(
        namespace=unique_name, region="us-east-1", endpoint_url=moto_endpoint, interval_s=1
    )
    with open_broker(f"sqlite:///{tmp_path}/q.db?queue=segments") as broker:
        broker.send_batch([1, 2, 3])
        broker.send(4, delay_s=60)
        collector = QueueCollector(broker)
        registry = CollectorRegistry()
        publisher = CloudWatchPublisher(open_cloudwatch(options), collector, options, registry)
        assert publisher.publish()
        expected = collector.stats()
    assert expected is not None
    [point] = _datapoints(moto_endpoint, unique_name, BACKLOG_METRIC, "segments")
    assert point["Maximum"] == expected.pending == 4
    [delayed] = _datapoints(moto_endpoint, unique_name, "QueueDelayed", "segments")
    assert delayed["Maximum"] == 1
    assert _errors(registry) == 0


def test_failed_publishes_are_counted_and_warned_once_per_streak(
    moto_endpoint: str, unique_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    closed = CloudWatchOptions(
        namespace=unique_name, region="us-east-1", endpoint_url=f"http://127.0.0.1:{_free_port()}"
    )
    reachable = CloudWatchOptions(
        namespace=unique_name, region="us-east-1", endpoint_url=moto_endpoint
    )
    with open_broker(f"sqlite:///{tmp_path}/q.db?queue=segments") as broker:
        registry = CollectorRegistry()
        publisher = CloudWatchPublisher(
            open_cloudwatch(closed), QueueCollector(broker), closed, registry
        )
        dead_client, live_client = publisher.client, open_cloudwatch(reachable)
        with caplog.at_level(logging.INFO, logger="fleetinfer.node"):
            assert not publisher.publish()
            assert not publisher.publish()
            publisher.client = live_client  # the endpoint answers again
            assert publisher.publish()
            publisher.client = dead_client
            assert not publisher.publish()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # one per streak of failures, not one per failure
    assert all("cannot publish queue depths to CloudWatch" in w for w in warnings)
    assert "Could not connect to the endpoint URL" in warnings[0]
    assert any(
        "publishing queue depths to CloudWatch again" in r.getMessage() for r in caplog.records
    )
    assert _errors(registry) == 3


def _listens(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis server of this test's own, which it may stop."""
    port = _free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not _listens(port):
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0?queue=segments", server
    finally:
        server.kill()
        server.wait()


def test_a_queue_that_cannot_be_read_skips_the_period_and_sends_nothing(
    moto_endpoint: str, unique_name: str, own_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, server = own_redis
    options = CloudWatchOptions(
        namespace=unique_name, region="us-east-1", endpoint_url=moto_endpoint
    )
    broker = open_broker(url)
    try:
        broker.send(1)
        server.kill()
        server.wait()
        registry = CollectorRegistry()
        publisher = CloudWatchPublisher(
            open_cloudwatch(options), QueueCollector(broker), options, registry
        )
        assert not publisher.publish()
    finally:
        broker.close()
    assert _datapoints(moto_endpoint, unique_name, BACKLOG_METRIC, "segments") == []
    assert _errors(registry) == 0  # nothing was sent, so nothing failed to be


def _published(endpoint: str, namespace: str, count: int) -> set[float]:
    """The backlogs published so far (each second's least and greatest), once `count` were."""
    deadline = time.monotonic() + 30
    while True:
        points = _datapoints(endpoint, namespace, BACKLOG_METRIC, "segments")
        if sum(p["SampleCount"] for p in points) >= count or time.monotonic() > deadline:
            return {p["Minimum"] for p in points} | {p["Maximum"] for p in points}
        time.sleep(0.1)


def test_the_thread_publishes_at_start_when_woken_and_a_fresh_reading_at_stop(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    options = CloudWatchOptions(
        namespace=unique_name, region="us-east-1", endpoint_url=moto_endpoint, interval_s=3600
    )  # an hour: every publish below is start's, the drain's or stop's own
    with open_broker(f"sqlite:///{tmp_path}/q.db?queue=segments") as broker:
        broker.send_batch([1, 2])
        collector = QueueCollector(broker)  # its readings last a second
        publisher = CloudWatchPublisher(
            open_cloudwatch(options), collector, options, CollectorRegistry()
        ).start()
        assert _published(moto_endpoint, unique_name, 1) == {2.0}
        time.sleep(1.1)
        broker.send_batch([3, 4, 5])
        publisher.publish_soon()  # the drain began
        assert _published(moto_endpoint, unique_name, 2) == {2.0, 5.0}
        broker.send(6)
        publisher.stop()  # within the second of the drain's reading: read again all the same
    assert _published(moto_endpoint, unique_name, 3) == {2.0, 5.0, 6.0}


def test_unreadable_queue_depths_warn_once_per_streak(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky:  # a broker of which the collector reads only stats()
        def __init__(self) -> None:
            self.down = True

        def stats(self) -> QueueStats:
            if self.down:
                raise BrokerUnavailableError("down")
            return QueueStats(visible=1, in_flight=0, delayed=0, dead=0)

    broker = Flaky()
    collector = QueueCollector(cast(Broker, broker))
    caplog.set_level(logging.INFO, logger="fleetinfer.node")
    assert [collector.stats(fresh=True) for _ in range(5)] == [None] * 5
    broker.down = False
    assert collector.stats(fresh=True) is not None
    broker.down = True
    assert collector.stats(fresh=True) is None
    messages = [r.getMessage() for r in caplog.records if r.name == "fleetinfer.node"]
    assert [m.split(" (")[0] for m in messages] == [
        "cannot read queue depths", "queue depths readable again", "cannot read queue depths",
    ]  # fmt: skip
