"""A message a worker holds while its task runs: a heartbeat thread keeps it invisible to others.

The heartbeat extends the visibility every third of the timeout, so a long task is never
delivered twice while its worker lives, and a killed worker's message comes back after one
timeout. When the node drains and the grace period ends before the task does, the heartbeat
thread releases the message (visible to other nodes at once) and ends the process: a task cut
short is retried elsewhere instead of waiting out its visibility timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from fleetinfer.errors import FleetinferError, ReceiptExpiredError
from fleetinfer.queue.base import Broker, Message

log = logging.getLogger("fleetinfer.worker")

CHECK_EVERY_S = 0.1
"""How often the heartbeat thread looks at the drain deadline (signal handlers cannot wake it)."""

Deadline = Callable[[], float | None]
"""Returns the monotonic time at which held work must be given up, or None while not draining."""


class Lease:
    """Holds one message: `with Lease(...) as lease:` heartbeats until the block ends."""

    def __init__(
        self,
        broker: Broker,
        message: Message,
        *,
        visibility_timeout_s: float,
        abandon_at: Deadline,
        on_abandon: Callable[[Message], None],
    ) -> None:
        self.broker = broker
        self.message = message
        self.visibility_timeout_s = visibility_timeout_s
        self.interval_s = max(visibility_timeout_s / 3.0, 0.05)
        self._abandon_at = abandon_at
        self._on_abandon = on_abandon
        self._settle_lock = threading.Lock()
        self._settled = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="fleetinfer-heartbeat", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def extend(self) -> None:
        """Push the visibility timeout out by a full timeout from now (the heartbeat)."""
        with self._settle_lock:
            if not self._settled:
                self.broker.extend_visibility(self.message.receipt, self.visibility_timeout_s)

    def settle(self, action: Callable[[str], None]) -> bool:
        """Run `action(receipt)` (ack, release, dead-letter) once; False if already settled."""
        with self._settle_lock:
            if self._settled:
                return False
            self._settled = True
            action(self.message.receipt)
            return True

    def _beat(self) -> None:
        next_extend_at = time.monotonic() + self.interval_s
        while not self._stop.wait(min(CHECK_EVERY_S, self.interval_s)):
            if self._past_deadline():
                self._abandon()
                return
            if time.monotonic() >= next_extend_at:
                self._try_extend()
                next_extend_at = time.monotonic() + self.interval_s

    def _past_deadline(self) -> bool:
        deadline = self._abandon_at()
        return deadline is not None and time.monotonic() >= deadline

    def _try_extend(self) -> None:
        try:
            self.extend()
        except ReceiptExpiredError:
            log.warning("lost the lease on message %s: it may run twice", self.message.id)
        except FleetinferError as exc:
            log.warning("heartbeat for message %s failed, will retry: %s", self.message.id, exc)

    def _abandon(self) -> None:
        try:
            if not self.settle(self.broker.release):
                return  # the task finished meanwhile and its worker settled the message
        except FleetinferError as exc:
            log.warning("could not release message %s on drain: %s", self.message.id, exc)
        self._on_abandon(self.message)
