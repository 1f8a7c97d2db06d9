"""The spin-then-block policy of the model server's transport."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

from fleetinfer.server.spin import MAX_BACKOFF_WAITS, Spinner


def test_a_spin_ends_as_soon_as_its_condition_holds() -> None:
    polls = iter([False, False, True])
    assert Spinner(budget_us=1_000_000).spin(lambda: next(polls)) is True


def test_a_zero_budget_never_spins() -> None:
    def stop() -> bool:
        raise AssertionError("polled without a budget")

    assert Spinner(budget_us=0).spin(stop) is False


def test_after_fruitless_spins_the_waits_in_between_block_at_once_doubling_up_to_the_cap() -> None:
    blocked = _waits_skipped_between_spins(Spinner(budget_us=1), waits=400)
    assert blocked[:7] == [1, 2, 4, 8, 16, 32, 64]
    assert set(blocked[7:]) == {MAX_BACKOFF_WAITS}


def test_a_spin_that_finds_its_condition_resets_the_backoff() -> None:
    spinner = Spinner(budget_us=1)
    spinner.spin(lambda: False)
    spinner.spin(lambda: False)  # skipped: the backoff is 1
    assert spinner.spin(lambda: True) is True
    assert spinner.spin(lambda: False) is False  # spins again (fruitlessly): backoff back to 1
    assert _polls(spinner, lambda: True) == 0  # this wait is skipped
    assert _polls(spinner, lambda: True) == 1


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


def _waits_skipped_between_spins(spinner: Spinner, waits: int) -> list[int]:
    """For a peer that never answers in time: how many waits blocked at once between spins."""
    spun = [i for i in range(waits) if _polls(spinner, lambda: False) > 0]
    return [b - a - 1 for a, b in itertools.pairwise(spun)]
