"""A signal to the agent, or to every process of the node, drains the node once, led by the agent.

Deliveries: `agent` (SIGTERM to the agent alone), `every-term` (SIGTERM to each process, as
`kill -TERM -PGID` or systemd's control-group kill), `every-int` (SIGINT to each, as Ctrl-C in a
terminal); workers forked from the zygote (`--preload`) or fresh interpreters (`--no-preload`).
The queue's visibility timeout is 120 s: a message seen again within a test was released.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from fleetinfer.queue import open_broker
from fleetinfer.results import TaskStatus, open_store
from fleetinfer.task import send_tasks
from tests.apps.harness import NodeProcess, wait_for
from tests.faults.node import descendants, node_pids, signal_node, tracebacks, wait_all_gone

EXIT_DRAIN_INCOMPLETE = 7
GRACE_S = 3.0  # the workers release at 2.4 s: 0.6 s before the agent would kill them
SLACK_S = 3.0  # a loaded 2-core host: the time to end processes after the grace


def start_node(queue_url: str, results_url: str, tmp_path: Path, *options: str) -> NodeProcess:
    options = tuple("--no-preload" if o == "--fresh" else o for o in options)
    return NodeProcess(
        "tests.faults.app:app", queue_url, results_url, "--workers", "2",
        *options, log_path=tmp_path / "node.log",
    )  # fmt: skip


UNCLEAN = [
    *[("sqlite", d, s) for d in ("agent", "every-term", "every-int") for s in ("preload", "fresh")],
    ("redis", "every-int", "preload"),
]


@pytest.mark.parametrize(("queue_url", "delivery", "start"), UNCLEAN, indirect=["queue_url"])
def test_a_signal_drains_once_finishing_what_fits_the_grace_and_releasing_the_rest(
    queue_url: str, results_url: str, tmp_path: Path, delivery: str, start: str
) -> None:
    with open_broker(queue_url) as broker, open_store(results_url) as store:
        send_tasks(broker, "nap", [{"s": 1.0}, {"s": 60}])
        node = start_node(queue_url, results_url, tmp_path, "--grace-s", str(GRACE_S), f"--{start}")
        try:
            wait_for(lambda: broker.stats().in_flight == 2, 60, "two tasks in flight")
            pids = node_pids(node)
            sent_at = time.monotonic()
            signal_node(node, delivery)
            code = node.wait(GRACE_S + 30)
            took_s = time.monotonic() - sent_at
        finally:
            node.close()
        assert code == EXIT_DRAIN_INCOMPLETE, node.log()
        assert took_s < GRACE_S + SLACK_S
        wait_all_gone(pids, 5, "every process of the node to end")
        stats = broker.stats()
        assert (stats.visible, stats.in_flight) == (1, 0)  # released, not left to time out
        assert store.count(TaskStatus.SUCCEEDED) == 1  # the 1 s task finished in the grace
        stopped = node.event("stopped")
        assert stopped["clean"] is False
        assert stopped["outcomes"]["abandoned"] == 1
        assert tracebacks(node.log_path) == []


CLEAN = [("sqlite", "every-int", "preload"), ("redis", "every-term", "fresh")]


@pytest.mark.parametrize(("queue_url", "delivery", "start"), CLEAN, indirect=["queue_url"])
def test_a_drain_in_which_every_running_task_finishes_exits_0(
    queue_url: str, results_url: str, tmp_path: Path, delivery: str, start: str
) -> None:
    with open_broker(queue_url) as broker, open_store(results_url) as store:
        send_tasks(broker, "nap", [{"s": 1.0}, {"s": 1.0}, {"s": 1.0}])
        node = start_node(queue_url, results_url, tmp_path, "--grace-s", "20", f"--{start}")
        try:
            wait_for(lambda: broker.stats().in_flight == 2, 60, "two tasks in flight")
            signal_node(node, delivery)
            assert node.wait(30) == 0, node.log()
        finally:
            node.close()
        assert store.count(TaskStatus.SUCCEEDED) == 2
        stats = broker.stats()
        assert (stats.visible, stats.in_flight) == (1, 0)  # the third was never started
        assert node.event("stopped")["clean"] is True
        assert tracebacks(node.log_path) == []


@pytest.mark.parametrize("queue_url", ["sqlite"], indirect=True)
def test_a_second_signal_to_the_agent_releases_running_tasks_at_once(
    queue_url: str, results_url: str, tmp_path: Path
) -> None:
    with open_broker(queue_url) as broker:
        send_tasks(broker, "nap", [{"s": 60}, {"s": 60}])
        node = start_node(queue_url, results_url, tmp_path, "--grace-s", "60")
        try:
            wait_for(lambda: broker.stats().in_flight == 2, 60, "two tasks in flight")
            node.proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            sent_at = time.monotonic()
            node.proc.send_signal(signal.SIGINT)
            assert node.wait(30) == EXIT_DRAIN_INCOMPLETE, node.log()
            took_s = time.monotonic() - sent_at
        finally:
            node.close()
        assert took_s < SLACK_S
        stats = broker.stats()
        assert (stats.visible, stats.in_flight) == (2, 0)
        assert tracebacks(node.log_path) == []


@pytest.mark.parametrize("queue_url", ["sqlite"], indirect=True)
def test_workers_of_a_killed_zygote_finish_their_tasks_and_the_node_goes_on(
    queue_url: str, results_url: str, tmp_path: Path
) -> None:
    with open_broker(queue_url) as broker, open_store(results_url) as store:
        send_tasks(broker, "nap", [{"s": 2.0}, {"s": 2.0}])
        node = start_node(queue_url, results_url, tmp_path, "--grace-s", "20", "--preload")
        try:
            wait_for(lambda: broker.stats().in_flight == 2, 60, "two tasks in flight")
            zygote = _zygote_of(node)
            workers = descendants(zygote)
            os.kill(zygote, signal.SIGKILL)
            wait_for(lambda: store.count(TaskStatus.SUCCEEDED) == 2, 20, "both tasks to finish")
            wait_all_gone(workers, 10, "the orphaned workers to end")
            wait_for(lambda: _workers_alive(node) == 2, 30, "workers forked anew")
            assert node.health()["draining"] is False
            node.terminate()
            assert node.wait(30) == 0, node.log()
        finally:
            node.close()
        assert broker.stats().pending == 0


def _workers_alive(node: NodeProcess) -> int:
    try:
        return int(node.health()["workers_alive"])
    except OSError:  # a loaded host: the health endpoint dropped one request
        return -1


def _zygote_of(node: NodeProcess) -> int:
    """The agent's child that runs the zygote (its forked workers share its command line)."""
    for pid in descendants(node.proc.pid):
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            is_zygote = b"fleetinfer.node.zygote" in cmdline.read()
        with open(f"/proc/{pid}/stat", "rb") as stat:
            parent = int(stat.read().rsplit(b")", 1)[-1].split()[1])
        if is_zygote and parent == node.proc.pid:
            return pid
    raise AssertionError("the node runs no zygote")
