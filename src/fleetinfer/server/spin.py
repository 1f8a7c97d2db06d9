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
- only while the peer usually answers within the budget: every wait is timed, spun or not
  (`answered`), and a running mean of the recent ones (each counted up to 4 budgets, so that one
  pause between tasks is forgotten within about ten answers) must be within the budget. A peer
  that answers slowly (a long model call, a worker busy between requests) is waited for blocked
  from then on, at no spinning cost; one that speeds up is spun for again as soon as the mean
  comes back under the budget.

`stop` says when to end the spin early: the socket became readable, or (in the server) another
thread has work that needs the GIL. The caller then reads as usual, blocking if nothing came.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

MEAN_WEIGHT_SHIFT = 3  # each wait moves the running mean by 1/8 of its difference
_ONE_SPINNER = threading.Lock()


class Spinner:
    """The spin-then-block policy of one reader; used by one thread at a time."""

    def __init__(self, budget_us: float) -> None:
        self.budget_ns = int(budget_us * 1000)
        self.mean_wait_ns = 0  # recent waits from `spin` to `answered`, each capped at 4 budgets
        self._started_ns = 0

    def spin(self, stop: Callable[[], bool]) -> bool:
        """A wait begins: poll `stop` for up to the budget; True once it held, False if the
        budget ran out or spinning was not worth it. Either way the caller goes on to read, then
        calls `answered`."""
        self._started_ns = now_ns = time.perf_counter_ns()
        if self.budget_ns <= 0 or self.mean_wait_ns > self.budget_ns:
            return False
        if not _ONE_SPINNER.acquire(blocking=False):
            return False
        try:
            deadline_ns = now_ns + self.budget_ns
            while not stop():
                if time.perf_counter_ns() >= deadline_ns:
                    return False
                os.sched_yield()
        finally:
            _ONE_SPINNER.release()
        return True

    def answered(self) -> None:
        """The wait that `spin` began is over: fold its length into the running mean."""
        if not self._started_ns:
            return
        waited_ns = min(time.perf_counter_ns() - self._started_ns, 4 * self.budget_ns)
        self._started_ns = 0
        self.mean_wait_ns += (waited_ns - self.mean_wait_ns) >> MEAN_WEIGHT_SHIFT
