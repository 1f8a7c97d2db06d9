"""Queue depth gauges for the node's `/metrics`, read from the broker when scraped.

    fleetinfer_queue_messages{queue, state}             visible | in_flight | delayed | dead
    fleetinfer_queue_oldest_message_age_seconds{queue}  how long ago the oldest visible message
                                                        was sent (0 when none; absent on SQS)

These are what an autoscaler scales on (KEDA, the node's CloudWatch metrics of `cloudwatch.py`):
the backlog and how long it has waited. Readings are cached for `min_interval_s`, so frequent scrapes cost one broker round
trip a second at most; a broker that does not answer leaves the gauges out of that scrape
(one warning per streak of failed readings).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from fleetinfer.errors import TransientError
from fleetinfer.queue.base import Broker, QueueStats

log = logging.getLogger("fleetinfer.node")

STATES = ("visible", "in_flight", "delayed", "dead")


def queue_label(broker: Broker) -> str:
    """The queue's name (never its URL, which may hold a password)."""
    name = getattr(broker, "queue", None)
    return name if isinstance(name, str) and name else "default"


class QueueCollector:
    """A Prometheus collector reading one broker's depths when scraped."""

    def __init__(self, broker: Broker, *, min_interval_s: float = 1.0) -> None:
        self.broker = broker
        self.queue = queue_label(broker)
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._stats: QueueStats | None = None
        self._read_at = float("-inf")
        self._failing = False  # the last reading failed (and was warned of)

    def stats(self, *, fresh: bool = False) -> QueueStats | None:
        """The latest depths (read again when older than min_interval_s, or when `fresh`);
        None if unreadable."""
        with self._lock:
            if fresh or time.monotonic() - self._read_at >= self.min_interval_s:
                self._read_at = time.monotonic()
                try:
                    self._stats = self.broker.stats()
                except TransientError as exc:
                    if not self._failing:  # one warning per streak of failed readings
                        log.warning("cannot read queue depths (for /metrics, CloudWatch): %s", exc)
                    self._stats, self._failing = None, True
                    return None
                if self._failing:
                    log.info("queue depths readable again (for /metrics, CloudWatch)")
                    self._failing = False
            return self._stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        if stats is None:
            return
        depth = GaugeMetricFamily(
            "fleetinfer_queue_messages",
            "Messages in the queue, by state (visible, in_flight, delayed, dead).",
            labels=["queue", "state"],
        )
        for state in STATES:
            depth.add_metric([self.queue, state], getattr(stats, state))
        yield depth
        if stats.oldest_visible_age_s is not None:
            age = GaugeMetricFamily(
                "fleetinfer_queue_oldest_message_age_seconds",
                "Seconds since the oldest visible message was sent (0 when none is visible).",
                labels=["queue"],
            )
            age.add_metric([self.queue], stats.oldest_visible_age_s)
            yield age
