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
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleetinfer.errors import MalformedMessageError, PayloadTooLargeError

MAX_MESSAGE_BYTES = 256 * 1024
DEFAULT_VISIBILITY_TIMEOUT_S = 30.0
DEFAULT_MAX_RECEIVES = 5

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
        try:
            return json.loads(self.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MalformedMessageError(
                f"message {self.id} is not valid JSON ({exc.msg} at position {exc.pos}): "
                f"expected a JSON task envelope, got {self.body[:80]!r}"
            ) from exc


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
    """Depths of one queue: visible now, in flight (received, not acked), delayed, dead."""

    visible: int
    in_flight: int
    delayed: int
    dead: int

    @property
    def pending(self) -> int:
        """Messages not yet acked or dead: visible + in flight + delayed."""
        return self.visible + self.in_flight + self.delayed


def encode_body(body: JsonValue) -> str:
    """Encode a JSON value as a message body, enforcing the size limit."""
    try:
        text = json.dumps(body, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MalformedMessageError(f"message body is not JSON-serializable: {exc}") from exc
    check_body_size(text)
    return text


def check_body_size(text: str, limit_bytes: int = MAX_MESSAGE_BYTES) -> None:
    """Raise `PayloadTooLargeError` when the UTF-8 encoding of `text` is above the limit."""
    size = len(text.encode("utf-8"))
    if size > limit_bytes:
        raise PayloadTooLargeError("message body", size, limit_bytes)


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
    def send_raw_batch(self, bodies: Sequence[str], *, delay_s: float = 0.0) -> list[str]:
        """Enqueue bodies as they are (each size-checked); returns their message ids in order."""

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
        """Current depths."""

    @abstractmethod
    def purge(self) -> None:
        """Delete every message, live and dead (tests and benchmarks)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the broker is unusable afterwards."""

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
