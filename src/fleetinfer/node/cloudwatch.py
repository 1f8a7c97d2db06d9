"""Queue depths to Amazon CloudWatch: the metric the rendered ECS scaling policy reads.

With `node.cloudwatch_namespace` set, a daemon thread of the agent sends, with PutMetricData,
the depths the node's `/metrics` shows (one `QueueCollector` reading serves both):

    QueueBacklog      visible + in_flight + delayed   what the ECS target tracking divides by
                                                      the running tasks (docs/deploy.md)
    QueueVisible, QueueInFlight, QueueDelayed, QueueDead          each state on its own

each a Count in the namespace, with the dimension `Queue` = the queue's name (never its URL).
It publishes once at start, every `interval_s`, once when the drain begins and once at stop, so
the scaling policy sees the backlog a node leaves behind. Below 60 s the metrics are high
resolution (StorageResolution 1). Every node of a queue publishes the same numbers: the policy
reads their Maximum.

A PutMetricData that fails (no credentials, endpoint down, throttled) is counted in
`fleetinfer_cloudwatch_publish_errors_total` and logged once per streak of failures; a queue
that cannot be read skips that period (the collector logs why). The thread only reads: the
node's tasks never wait for it.
"""

from __future__ import annotations

import datetime
import logging
import threading
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from fleetinfer.aws import import_boto3
from fleetinfer.errors import ConfigError
from fleetinfer.node.queue_metrics import QueueCollector
from fleetinfer.queue.base import QueueStats

log = logging.getLogger("fleetinfer.node")

BACKLOG_METRIC = "QueueBacklog"
QUEUE_DIMENSION = "Queue"
STATE_METRICS = {
    "visible": "QueueVisible",
    "in_flight": "QueueInFlight",
    "delayed": "QueueDelayed",
    "dead": "QueueDead",
}
STANDARD_RESOLUTION_S = 60
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 5.0
MAX_ATTEMPTS = 2  # one retry: the next period is the real retry
STOP_TIMEOUT_S = 10.0  # the last publish at stop: at most this long, then the node exits


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudWatchOptions:
    """Where and how often the node publishes its queue depths (`node.cloudwatch_*`)."""

    namespace: str
    region: str | None = None  # None: boto3's default chain (AWS_REGION, the profile, …)
    endpoint_url: str | None = None
    interval_s: float = float(STANDARD_RESOLUTION_S)

    def __post_init__(self) -> None:
        if not self.namespace:
            raise ConfigError("node.cloudwatch_namespace: expected a namespace, got ''")
        if not self.interval_s >= 1:
            raise ConfigError(
                f"node.cloudwatch_interval_s: expected at least 1 s, got {self.interval_s!r}"
            )

    @property
    def storage_resolution_s(self) -> int:
        """1 (high resolution) when publishing more often than once a minute, else 60."""
        return 1 if self.interval_s < STANDARD_RESOLUTION_S else STANDARD_RESOLUTION_S


def backlog(stats: QueueStats) -> int:
    """What waits for a node: visible + in flight + delayed (dead letters wait for a person)."""
    return stats.pending


def metric_data(
    queue: str, stats: QueueStats, *, storage_resolution_s: int, at: datetime.datetime
) -> list[dict[str, Any]]:
    """The MetricData of one PutMetricData: the backlog, then each state."""
    values = {BACKLOG_METRIC: backlog(stats)}
    values |= {name: getattr(stats, state) for state, name in STATE_METRICS.items()}
    dimensions = [{"Name": QUEUE_DIMENSION, "Value": queue}]
    return [
        {"MetricName": name, "Dimensions": dimensions, "Timestamp": at, "Value": float(value),
         "Unit": "Count", "StorageResolution": storage_resolution_s}
        for name, value in values.items()
    ]  # fmt: skip


def open_cloudwatch(options: CloudWatchOptions) -> Any:
    """A CloudWatch client: `MissingExtraError` without boto3, `ConfigError` without a region.
    Credentials are looked up on the first request (a missing one is a failed publish)."""
    boto3 = import_boto3("publishing queue depths to CloudWatch (node.cloudwatch_namespace)")
    from botocore.config import Config
    from botocore.exceptions import NoRegionError

    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
    )
    try:
        return boto3.client(
            "cloudwatch",
            region_name=options.region,
            endpoint_url=options.endpoint_url,
            config=config,
        )
    except NoRegionError:
        raise ConfigError(
            "node.cloudwatch_namespace is set but no AWS region is known: set "
            "node.cloudwatch_region (FLEETINFER_CLOUDWATCH_REGION) or AWS_REGION"
        ) from None
    except ValueError as exc:  # botocore's own check of the endpoint URL or the region
        raise ConfigError(f"cannot publish to CloudWatch with these settings: {exc}") from exc


class CloudWatchPublisher:
    """Publishes one collector's readings from a daemon thread until `stop()`."""

    def __init__(
        self,
        client: Any,
        collector: QueueCollector,
        options: CloudWatchOptions,
        registry: CollectorRegistry,
    ) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        self.client = client
        self.collector = collector
        self.options = options
        self.errors = Counter(
            "fleetinfer_cloudwatch_publish_errors",
            "PutMetricData calls that failed (queue depths to CloudWatch).",
            registry=registry,
        )
        self._boto_errors = (BotoCoreError, ClientError)
        self._failing = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetinfer-cloudwatch", daemon=True)

    def start(self) -> CloudWatchPublisher:
        self._thread.start()
        return self

    def publish_soon(self) -> None:
        """Publish now, not at the end of the period (the drain began)."""
        self._wake.set()

    def stop(self) -> None:
        """Publish once more (the depths the node leaves behind), then end the thread; waits
        at most STOP_TIMEOUT_S for an endpoint that does not answer."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT_S)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.publish()
            self._wake.wait(self.options.interval_s)
            self._wake.clear()
        self.publish(fresh=True)  # what the node leaves behind, not a reading a second old

    def publish(self, *, fresh: bool = False) -> bool:
        """One period: read the depths (`fresh`: not the collector's cached reading), send
        them; False when either could not be done."""
        stats = self.collector.stats(fresh=fresh)
        if stats is None:
            return False
        data = metric_data(
            self.collector.queue,
            stats,
            storage_resolution_s=self.options.storage_resolution_s,
            at=datetime.datetime.now(datetime.UTC),
        )
        try:
            self.client.put_metric_data(Namespace=self.options.namespace, MetricData=data)
        except self._boto_errors as exc:
            self._failed(exc)
            return False
        self._succeeded()
        return True

    def _failed(self, exc: BaseException) -> None:
        self.errors.inc()
        if not self._failing:
            self._failing = True
            log.warning(
                "cannot publish queue depths to CloudWatch (namespace %s), still trying every "
                "%g s: %s",
                self.options.namespace,
                self.options.interval_s,
                exc,
            )

    def _succeeded(self) -> None:
        if self._failing:
            self._failing = False
            log.info("publishing queue depths to CloudWatch again")
