"""The queues one node consumes: its base queue plus the capability classes it satisfies.

`PlacedBroker` is a `Broker` over several brokers of one backend. It lists the recorded classes
(`fleetinfer.queue.classes`) at most every `refresh_s`, opens the ones whose requirements the
node's attributes satisfy, and receives from them in turn. A receipt carries the index of the
broker it came from, so `ack`, `release`, `extend_visibility` and `dead_letter` go back to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from fleetinfer.errors import ReceiptExpiredError, TransientError
from fleetinfer.node.attributes import satisfies
from fleetinfer.queue.base import Broker, DeadLetter, Message, QueueStats, long_poll
from fleetinfer.queue.classes import (
    class_queue_url,
    class_requirements,
    list_classes,
    mark_consumed,
)

log = logging.getLogger("fleetinfer.queue")

DEFAULT_REFRESH_S = 5.0
Opener = Callable[[str], Broker]


class PlacedBroker(Broker):
    """Base queue + satisfied class queues, read in turn; settles through the right one."""

    def __init__(
        self,
        base: Broker,
        attributes: Mapping[str, str],
        *,
        opener: Opener | None = None,
        refresh_s: float = DEFAULT_REFRESH_S,
    ) -> None:
        self.base = base
        self.url = base.url
        self.queue: str | None = getattr(base, "queue", None)  # its name, for /metrics
        self.visibility_timeout_s = base.visibility_timeout_s
        self.max_receives = base.max_receives
        self.attributes = dict(attributes)
        self._open = opener or self._open_like_base
        self._refresh_s = refresh_s
        self._refreshed_at = float("-inf")
        self.brokers: list[Broker] = [base]
        self.classes: list[str] = []
        self._next = 0

    def _open_like_base(self, url: str) -> Broker:
        from fleetinfer.queue import open_broker

        return open_broker(
            url, visibility_timeout_s=self.visibility_timeout_s, max_receives=self.max_receives
        )

    def refresh(self, *, force: bool = False) -> None:
        """Open the queues of newly recorded classes that this node satisfies."""
        now = time.monotonic()
        if not force and now - self._refreshed_at < self._refresh_s:
            return
        self._refreshed_at = now
        try:
            recorded = list_classes(self.base)
        except TransientError as exc:
            log.warning("cannot list capability classes: %s", exc)
            return
        for name in recorded:
            if name not in self.classes and satisfies(class_requirements(name), self.attributes):
                self.brokers.append(self._open(class_queue_url(self.base.url, name)))
                self.classes.append(name)
                log.info("consuming capability class %s", name)
        self._mark_consumed()

    def _mark_consumed(self) -> None:
        try:
            mark_consumed(self.base, self.classes)
        except Exception as exc:  # bookkeeping for `status`: never a reason to stop working
            log.warning("cannot mark capability classes as consumed: %s", exc)

    # -- receiving ---------------------------------------------------------------------------

    def receive(
        self,
        *,
        max_messages: int = 1,
        wait_s: float = 0.0,
        visibility_timeout_s: float | None = None,
    ) -> list[Message]:
        self.refresh()
        if len(self.brokers) == 1:
            return self._tagged(
                0,
                self.base.receive(
                    max_messages=max_messages,
                    wait_s=wait_s,
                    visibility_timeout_s=visibility_timeout_s,
                ),
            )
        return long_poll(lambda: self._receive_once(max_messages, visibility_timeout_s), wait_s)

    def _receive_once(self, max_messages: int, visibility_timeout_s: float | None) -> list[Message]:
        count = len(self.brokers)
        for step in range(count):
            index = (self._next + step) % count
            got = self.brokers[index].receive(
                max_messages=max_messages, visibility_timeout_s=visibility_timeout_s
            )
            if got:
                self._next = (index + 1) % count
                return self._tagged(index, got)
        return []

    @staticmethod
    def _tagged(index: int, messages: list[Message]) -> list[Message]:
        return [
            Message(m.id, m.body, f"{index}|{m.receipt}", m.receive_count, m.sent_at)
            for m in messages
        ]

    def _route(self, receipt: str) -> tuple[Broker, str]:
        index, sep, inner = receipt.partition("|")
        if not sep or not index.isdigit() or int(index) >= len(self.brokers):
            raise ReceiptExpiredError(f"receipt {receipt!r} was not issued by this node's queues")
        return self.brokers[int(index)], inner

    # -- settling ----------------------------------------------------------------------------

    def send_raw_batch(
        self, bodies: Sequence[str], *, delay_s: float = 0.0, dedup_ids: Sequence[str] | None = None
    ) -> list[str]:
        return self.base.send_raw_batch(bodies, delay_s=delay_s, dedup_ids=dedup_ids)

    def ack(self, receipt: str) -> None:
        broker, inner = self._route(receipt)
        broker.ack(inner)

    def release(self, receipt: str, *, delay_s: float = 0.0) -> None:
        broker, inner = self._route(receipt)
        broker.release(inner, delay_s=delay_s)

    def extend_visibility(self, receipt: str, timeout_s: float) -> None:
        broker, inner = self._route(receipt)
        broker.extend_visibility(inner, timeout_s)

    def dead_letter(self, receipt: str, reason: str) -> None:
        broker, inner = self._route(receipt)
        broker.dead_letter(inner, reason)

    # -- whole queues ------------------------------------------------------------------------

    def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        return [d for b in self.brokers for d in b.dead_letters(limit=limit)][:limit]

    def redrive(self, *, limit: int | None = None) -> int:
        return sum(b.redrive(limit=limit) for b in self.brokers)

    def stats(self) -> QueueStats:
        """Depths summed over every queue this node consumes."""
        self.refresh()
        every = [b.stats() for b in self.brokers]
        ages = [s.oldest_visible_age_s for s in every]
        return QueueStats(
            visible=sum(s.visible for s in every),
            in_flight=sum(s.in_flight for s in every),
            delayed=sum(s.delayed for s in every),
            dead=sum(s.dead for s in every),
            oldest_visible_age_s=None if None in ages else max(a or 0.0 for a in ages),
        )

    def purge(self) -> None:
        for broker in self.brokers:
            broker.purge()

    def close(self) -> None:
        for broker in self.brokers:
            broker.close()
