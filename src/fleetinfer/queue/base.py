"""The broker contract: SQS semantics, the same verbs in every backend.

Delivery is at least once. A received message is invisible to other consumers for its visibility
timeout; `ack` deletes it, `release` makes it visible again (optionally after a delay),
`extend_visibility` is the heartbeat of a long task. Every delivery increments the message's
receive count; a message whose receive count would exceed `max_receives` is moved to the
dead-letter queue instead of being delivered again. Bodies are text (JSON on the way in through
`send`), at most `max_message_bytes` (256 KiB, as SQS) on every backend.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fleetinfer.errors import (
    InputError,
    MalformedMessageError,
    PayloadTooLargeError,
    ReceiptExpiredError,
)
from fleetinfer.untrusted import as_utf8, decode_json

MAX_MESSAGE_BYTES = 256 * 1024
DEFAULT_VISIBILITY_TIMEOUT_S = 30.0
DEFAULT_MAX_RECEIVES = 5
MAX_DELAY_S = 15 * 60.0
MAX_WAIT_S = 20.0
MAX_VISIBILITY_S = 12 * 3600.0
MAX_RECEIVE_BATCH = 1000

JsonValue = Any
"""A value `json.dumps` accepts: dict, list, str, int, float, bool or None."""


@dataclass(frozen=True, slots=True)
class Message:
    """One delivery of a message: `receipt` identifies this delivery, `id` the message."""

    id: str
    body: str
    receipt: str
    receive_count: int
    sent_at: float

    def json(self) -> JsonValue:
        """Decode the body; a body that is not JSON raises `MalformedMessageError`."""
        return decode_json(self.body, what=f"message {self.id}")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message in the dead-letter queue, with why it is there."""

    id: str
    body: str
    reason: str
    receive_count: int
    dead_at: float


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Depths of one queue: visible now, in flight (received, not acked), delayed, dead; and
    how long ago the oldest visible message was sent (0.0 when none is visible; None where the
    backend cannot tell without receiving, as SQS, whose CloudWatch metric
    `ApproximateAgeOfOldestMessage` holds it)."""

    visible: int
    in_flight: int
    delayed: int
    dead: int
    oldest_visible_age_s: float | None = 0.0

    @property
    def pending(self) -> int:
        """Messages not yet acked or dead: visible + in flight + delayed."""
        return self.visible + self.in_flight + self.delayed


def encode_body(body: JsonValue) -> str:
    """Encode a JSON value as a message body, enforcing the size limit."""
    try:
        text = json.dumps(body, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise MalformedMessageError(f"message body is not JSON-serializable: {exc}") from exc
    check_body_size(text)
    return text


def check_body_size(text: str, limit_bytes: int = MAX_MESSAGE_BYTES) -> None:
    """Raise `PayloadTooLargeError` when the UTF-8 encoding of `text` is above the limit."""
    if not isinstance(text, str):
        raise MalformedMessageError(
            f"a raw message body must be text (str), got {type(text).__name__}: use send() for "
            "JSON values, or decode bytes first"
        )
    size = len(as_utf8(text, what="message body"))
    if size > limit_bytes:
        raise PayloadTooLargeError("message body", size, limit_bytes)


def raise_if_stale(stale_receipts: Sequence[str]) -> None:
    """Raise one `ReceiptExpiredError` naming every stale receipt of a batch, if any."""
    if stale_receipts:
        shown = ", ".join(repr(r) for r in stale_receipts[:5])
        more = f" and {len(stale_receipts) - 5} more" if len(stale_receipts) > 5 else ""
        raise ReceiptExpiredError(
            f"{len(stale_receipts)} receipt(s) no longer hold their message ({shown}{more}): "
            "the visibility timeout passed or the message was acked; it will be (or was) "
            "delivered again, so the task must be safe to run twice"
        )


def check_dedup_ids(bodies: Sequence[str], dedup_ids: Sequence[str] | None) -> None:
    """Deduplication ids, when given, are one non-empty string per body."""
    if dedup_ids is None:
        return
    if len(dedup_ids) != len(bodies):
        raise InputError(
            f"dedup_ids must hold one id per body: got {len(dedup_ids)} ids for "
            f"{len(bodies)} bodies"
        )
    for dedup_id in dedup_ids:
        if not isinstance(dedup_id, str) or not dedup_id:
            raise InputError(f"a dedup id must be a non-empty string, got {dedup_id!r}")


def check_delay(delay_s: float, *, limit_s: float = MAX_DELAY_S) -> None:
    """A delay is a number of seconds in [0, 15 min], as SQS allows."""
    if not 0.0 <= delay_s <= limit_s:
        raise InputError(
            f"delay_s must be a number of seconds between 0 and {limit_s:g}, got {delay_s!r}: "
            "for longer delays, schedule the send itself"
        )


def check_receive_args(
    max_messages: int, wait_s: float, visibility_timeout_s: float | None
) -> None:
    """Receive arguments in range: 1..MAX_RECEIVE_BATCH messages, wait >= 0, timeout > 0."""
    if not 1 <= max_messages <= MAX_RECEIVE_BATCH:
        raise InputError(
            f"max_messages must be between 1 and {MAX_RECEIVE_BATCH}, got {max_messages!r}"
        )
    if not 0.0 <= wait_s <= MAX_WAIT_S:
        raise InputError(f"wait_s must be between 0 and {MAX_WAIT_S:g} seconds, got {wait_s!r}")
    if visibility_timeout_s is not None and not 0.0 < visibility_timeout_s <= MAX_VISIBILITY_S:
        raise InputError(
            f"visibility_timeout_s must be above 0 and at most {MAX_VISIBILITY_S:g} seconds "
            f"(12 hours, as SQS), got {visibility_timeout_s!r}"
        )


class Broker(ABC):
    """One queue (and its dead-letter queue) on one backend."""

    url: str
    visibility_timeout_s: float
    max_receives: int

    def send(self, body: JsonValue, *, delay_s: float = 0.0) -> str:
        """Enqueue one JSON value; returns the message id."""
        return self.send_raw(encode_body(body), delay_s=delay_s)

    def send_batch(self, bodies: Sequence[JsonValue], *, delay_s: float = 0.0) -> list[str]:
        """Enqueue many JSON values in as few round trips as the backend allows."""
        return self.send_raw_batch([encode_body(b) for b in bodies], delay_s=delay_s)

    def send_raw(self, body: str, *, delay_s: float = 0.0) -> str:
        """Enqueue one body as it is (size-checked, not JSON-checked); returns the message id."""
        return self.send_raw_batch([body], delay_s=delay_s)[0]

    @abstractmethod
    def send_raw_batch(
        self,
        bodies: Sequence[str],
        *,
        delay_s: float = 0.0,
        dedup_ids: Sequence[str] | None = None,
    ) -> list[str]:
        """Enqueue bodies as they are (each size-checked); returns their message ids in order.

        With `dedup_ids` (one per body, as SQS FIFO's deduplication id), a body whose id is held
        by a message still in the queue (visible, delayed or in flight) is not enqueued again:
        its place in the returned list holds the message already queued. The id is free again
        once that message is acked or dead-lettered. SQLite and Redis deduplicate; an SQS
        standard queue cannot and sends every body (the worker's results-store check then
        keeps a task that already succeeded from running again)."""

    @abstractmethod
    def receive(
        self,
        *,
        max_messages: int = 1,
        wait_s: float = 0.0,
        visibility_timeout_s: float | None = None,
    ) -> list[Message]:
        """Take up to `max_messages` visible messages, long-polling up to `wait_s` for the first."""

    @abstractmethod
    def ack(self, receipt: str) -> None:
        """Delete the message of this delivery; a stale receipt raises `ReceiptExpiredError`."""

    def ack_batch(self, receipts: Sequence[str]) -> None:
        """Ack many deliveries; every valid receipt is acked, then stale ones raise together."""
        stale: list[str] = []
        for receipt in receipts:
            try:
                self.ack(receipt)
            except ReceiptExpiredError:
                stale.append(receipt)
        raise_if_stale(stale)

    @abstractmethod
    def release(self, receipt: str, *, delay_s: float = 0.0) -> None:
        """Make the message visible again now, or after `delay_s`."""

    @abstractmethod
    def extend_visibility(self, receipt: str, timeout_s: float) -> None:
        """Keep the message invisible for `timeout_s` more seconds from now (heartbeat)."""

    @abstractmethod
    def dead_letter(self, receipt: str, reason: str) -> None:
        """Move the message of this delivery to the dead-letter queue now, with a reason."""

    @abstractmethod
    def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        """List messages in the dead-letter queue, oldest first."""

    @abstractmethod
    def redrive(self, *, limit: int | None = None) -> int:
        """Move dead letters back to the queue with a fresh receive count; returns how many."""

    @abstractmethod
    def stats(self) -> QueueStats:
        """Current depths, and the age of the oldest visible message."""

    @abstractmethod
    def purge(self) -> None:
        """Delete every message, live and dead (tests and benchmarks)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the broker is unusable afterwards."""

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


POLL_MIN_S = 0.005
POLL_MAX_S = 0.05


def long_poll(receive_once: Callable[[], list[Message]], wait_s: float) -> list[Message]:
    """Call `receive_once` until it returns messages or `wait_s` passes, backing off from 5 ms to
    50 ms between empty tries (long polling for backends without a blocking receive)."""
    deadline = time.monotonic() + wait_s
    pause_s = POLL_MIN_S
    while True:
        messages = receive_once()
        remaining_s = deadline - time.monotonic()
        if messages or remaining_s <= 0:
            return messages
        time.sleep(min(pause_s, remaining_s))
        pause_s = min(pause_s * 2, POLL_MAX_S)
