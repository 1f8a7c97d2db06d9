"""The agent SIGKILLed alone (the OOM killer, a crashed supervisor): its node follows it.

Every process the agent started (zygote, workers, model server) dies with it: within 5 s none is
left, and the tasks they held are released at once (visible again, not after the visibility
timeout). What the node left behind (its folder, its workers' shared-memory segments) is gone
once the next node on the machine has started.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from fleetinfer.queue import open_broker
from fleetinfer.task import send_tasks
from tests.apps.harness import NodeProcess, wait_for
from tests.faults.node import leftovers_of, node_pids, wait_all_gone
from tests.helpers.tiny_models import affine_repository


@pytest.mark.parametrize(
    ("queue_url", "start"),
    [("sqlite", "--preload"), ("redis", "--no-preload")],
    indirect=["queue_url"],
)
def test_nothing_of_a_sigkilled_agents_node_outlives_it_or_is_left_once_the_next_node_starts(
    queue_url: str, results_url: str, tmp_path: Path, short_dir: Path, start: str
) -> None:
    models = affine_repository(short_dir / "repo")
    options = ("--workers", "2", "--client", "shared", "--models", str(models), "--grace-s", "30")
    with open_broker(queue_url) as broker:
        send_tasks(broker, "model_nap", [{"x": 1.0, "s": 60}, {"x": 2.0, "s": 60}])
        node = NodeProcess("tests.faults.app:app", queue_url, results_url, *options, start,
                           log_path=tmp_path / "node.log")  # fmt: skip
        try:
            wait_for(lambda: broker.stats().in_flight == 2, 60, "two tasks in flight")
            wait_for(lambda: len(leftovers_of(node_pids(node))) >= 3, 30, "segments and folder")
            pids = node_pids(node)
            assert len(pids) == 1 + 2 + 1 + (start == "--preload"), pids
            os.kill(node.proc.pid, signal.SIGKILL)
            node.proc.wait(5)
            wait_all_gone(pids, 5, "every process of the node to end within 5 s")
            wait_for(lambda: broker.stats().in_flight == 0, 2, "the held tasks to be released")
        finally:
            node.close()
        assert broker.stats().visible == 2
        broker.purge()
        nodes_after = NodeProcess("tests.faults.app:app", queue_url, results_url, *options,
                                  log_path=tmp_path / "next.log")  # fmt: skip
        try:
            nodes_after.event("ready")
            assert leftovers_of(pids) == []
            nodes_after.terminate()
            assert nodes_after.wait(30) == 0, nodes_after.log()
        finally:
            nodes_after.close()
