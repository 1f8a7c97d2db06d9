"""The node's counts agree with the results store, also when a worker dies right after storing.

A worker SIGKILLed after it stored a result and before it acked the message: the message comes
back (a duplicate, acked without running), and the success was counted once, when it was stored.
The kill is placed by the task itself (`tests.faults.app.killed_after_store`): a thread holds the
SQLite queue's write lock, so the ack waits, and kills the worker once the result is stored.
"""

from __future__ import annotations

from pathlib import Path

from fleetinfer.queue import open_broker
from fleetinfer.results import TaskStatus, open_store
from fleetinfer.task import send_tasks
from tests.apps.harness import NodeProcess


def test_a_worker_killed_between_store_and_ack_loses_no_success_from_the_nodes_counts(
    tmp_path: Path,
) -> None:
    queue_db, results_db = tmp_path / "queue.db", tmp_path / "results.db"
    queue_url = f"sqlite:///{queue_db}?visibility_timeout_s=2"
    results_url = f"sqlite:///{results_db}"
    with open_broker(queue_url) as broker, open_store(results_url) as store:
        paths = {"queue_db": str(queue_db), "results_db": str(results_db)}
        send_tasks(broker, "killed_after_store", [paths])
        send_tasks(broker, "nap", [{"s": 0.0}] * 4)
        node = NodeProcess(
            "tests.faults.app:app", queue_url, results_url, "--workers", "1",
            "--exit-when-empty", "--restart-backoff-s", "0.05", log_path=tmp_path / "node.log",
        )  # fmt: skip
        try:
            assert node.wait(60) == 0, node.log()
        finally:
            node.close()
        outcomes = node.event("stopped")["outcomes"]
        assert "exited with signal SIGKILL" in node.log_path.read_text()  # the kill happened
        assert store.count(TaskStatus.SUCCEEDED) == 5
        assert outcomes["succeeded"] == 5
        assert outcomes["duplicate"] == 1  # the stored task's message, back after the kill
