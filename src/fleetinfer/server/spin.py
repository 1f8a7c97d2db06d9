"""Spin briefly before blocking on a socket: on a VM, waking a blocked reader is most of the cost
of a local round trip.

A reader blocked in `recv` gives up its core; an idle vCPU halts, and waking it again costs a VM
exit, an inter-processor interrupt and cold caches. On the 2-core development VM (Firecracker,
`haltpoll.guest_halt_poll_ns=0`) a 16-byte request through the model server took 200 to 400 µs,
of which the client spent 113 µs in the kernel; with both ends polling their socket instead of
blocking it took 36 µs. Spinning costs CPU, so `Spinner` bounds it:

- at most `budget_us` per wait, yielding the core between polls (`sched_yield`), so a runnable
  thread on the same core is not held up by it;
- one spinning thread per process at a time, the others block at once: a spinning Python thread
  takes the GIL between polls, and two of them would make each other (and everyone) wait;
- after a spin that ran out without an answer the next 1, 2, 4, ... 64 waits block at once, so a
  peer that answers slowly (a long model call, a worker busy between requests) costs one wasted
  spin in every 64 waits, and a fast one is found again within 64.

`stop` says when to end the spin early: the socket became readable, or (in the server) another
thread has work that needs the GIL. The caller then reads as usual, blocking if nothing came.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

MAX_BACKOFF_WAITS = 64
_ONE_SPINNER = threading.Lock()


class Spinner:
    """The spin-then-block policy of one reader; used by one thread at a time."""

    def __init__(self, budget_us: float) -> None:
        self.budget_ns = int(budget_us * 1000)
        self._skip = 0
        self._backoff = 0

    def spin(self, stop: Callable[[], bool]) -> bool:
        """Poll `stop` for up to the budget; True once it held, False if the budget ran out
        (or spinning was skipped). Either way the caller goes on to read."""
        if self.budget_ns <= 0:
            return False
        if self._skip:
            self._skip -= 1
            return False
        if not _ONE_SPINNER.acquire(blocking=False):
            return False
        try:
            deadline_ns = time.perf_counter_ns() + self.budget_ns
            while not stop():
                if time.perf_counter_ns() >= deadline_ns:
                    self._backoff = min(2 * self._backoff or 1, MAX_BACKOFF_WAITS)
                    self._skip = self._backoff
                    return False
                os.sched_yield()
        finally:
            _ONE_SPINNER.release()
        self._backoff = 0
        return True
