"""The spin-then-block policy of the model server's transport."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from fleetinfer.server.spin import Spinner


def test_a_spin_ends_as_soon_as_its_condition_holds() -> None:
    polls = iter([False, False, True])
    assert Spinner(budget_us=1_000_000).spin(lambda: next(polls)) is True


def test_a_zero_budget_never_spins() -> None:
    def stop() -> bool:
        raise AssertionError("polled without a budget")

    assert Spinner(budget_us=0).spin(stop) is False


def test_a_peer_that_answers_slower_than_the_budget_is_waited_for_blocked() -> None:
    spinner = Spinner(budget_us=200)
    spins = []
    for _ in range(40):
        spins.append(_polls(spinner, lambda: False) > 0)
        time.sleep(0.002)  # the answer comes after 2 ms, ten budgets
        spinner.answered()
    assert spins[0] is True  # nothing known yet: spin
    assert not any(spins[5:])  # the mean wait is above the budget: block at once
    assert spinner.mean_wait_ns > spinner.budget_ns


def test_spinning_resumes_once_the_peer_answers_within_the_budget_again() -> None:
    spinner = Spinner(budget_us=200)
    for _ in range(20):  # a slow phase: long model calls
        spinner.spin(lambda: False)
        time.sleep(0.002)
        spinner.answered()
    assert _polls(spinner, lambda: True) == 0
    spinner.answered()
    fast_phase = []
    for _ in range(30):  # fast answers: each wait is folded into the mean, spun or not
        fast_phase.append(_polls(spinner, lambda: True))
        spinner.answered()
    assert fast_phase[0] == 0
    assert fast_phase[-1] == 1  # back to spinning, within about ten answers
    assert fast_phase.index(1) <= 15


def test_long_pauses_count_as_four_budgets_so_they_are_forgotten_within_a_dozen_answers() -> None:
    spinner = Spinner(budget_us=1_000)
    for _ in range(30):  # the client was busy between tasks, 50 budgets each time
        spinner.spin(lambda: True)
        time.sleep(0.05)
        spinner.answered()
    assert spinner.budget_ns < spinner.mean_wait_ns <= 4 * spinner.budget_ns
    polls = []
    for _ in range(12):
        polls.append(_polls(spinner, lambda: True))
        spinner.answered()
    assert polls[0] == 0
    assert polls[-1] == 1


def test_only_one_thread_of_a_process_spins_at_a_time() -> None:
    spinning, release = threading.Event(), threading.Event()

    def hold() -> bool:
        spinning.set()
        return release.is_set()

    first = threading.Thread(target=Spinner(budget_us=10_000_000).spin, args=(hold,))
    first.start()
    try:
        assert spinning.wait(5)
        assert _polls(Spinner(budget_us=10_000_000), lambda: True) == 0
    finally:
        release.set()
        first.join(5)
    assert _polls(Spinner(budget_us=10_000_000), lambda: True) == 1


def _polls(spinner: Spinner, stop: Callable[[], bool]) -> int:
    count = 0

    def counted() -> bool:
        nonlocal count
        count += 1
        return stop()

    spinner.spin(counted)
    return count
