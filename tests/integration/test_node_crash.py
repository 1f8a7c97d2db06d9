"""Workers SIGKILLed at random about every second: every task still ends with one result."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetinfer.queue import Broker, open_broker
from fleetinfer.results import TaskStatus, open_store
from fleetinfer.task import send_tasks
from tests.apps.harness import NodeProcess, wait_for

TASKS = 500
QUEUE_OPTIONS = "visibility_timeout_s=2&max_receives=50"


@pytest.fixture(params=["sqlite", "redis"])
def queue_url(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, unique_name: str
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/queue.db?{QUEUE_OPTIONS}"
        return
    url = f"{redis_url}?queue={unique_name}&{QUEUE_OPTIONS}"
    yield url
    with open_broker(url) as broker:
        broker.purge()


def test_random_worker_kills_lose_no_task_and_duplicate_no_result(
    queue_url: str, tmp_path: Path
) -> None:
    """Workers forked from the zygote (the default); they crash and are forked again."""
    crash_workers_through_a_job(queue_url, tmp_path)


def test_killing_workers_started_as_fresh_interpreters_loses_no_task_either(
    tmp_path: Path,
) -> None:
    """`--no-preload`: each worker its own interpreter; they crash and restart the same."""
    crash_workers_through_a_job(
        f"sqlite:///{tmp_path}/queue.db?{QUEUE_OPTIONS}", tmp_path, "--no-preload"
    )


def crash_workers_through_a_job(queue_url: str, tmp_path: Path, *options: str) -> None:
    results_url = f"sqlite:///{tmp_path}/results.db"
    with open_broker(queue_url) as broker, open_store(results_url) as store:
        task_ids = send_tasks(broker, "square", [{"x": i, "work_ms": 10} for i in range(TASKS)])
        node = NodeProcess(
            "tests.apps.jobs:app", queue_url, results_url, "--workers", "3", "--grace-s", "5",
            "--restart-backoff-s", "0.05", "--restart-backoff-max-s", "0.5",
            *options,
            log_path=tmp_path / "node.log",
        )  # fmt: skip
        try:
            node.event("ready")
            kills = _kill_workers_until_done(node, broker, lambda: store.count() >= TASKS)
            wait_for(lambda: broker.stats().pending == 0, 30, "the last acks")
            counted = _tasks_total(node.metrics())
            node.terminate()
            assert node.wait(30) == 0, node.log()
        finally:
            node.close()
            broker_stats = broker.stats()
        results = list(store.iter_results())
        assert sorted(r.task_id for r in results) == sorted(task_ids)
        assert {r.status for r in results} == {TaskStatus.SUCCEEDED}
        assert all(r.value["square"] == r.value["x"] ** 2 for r in results)
        assert broker.dead_letters() == []
        assert broker_stats.dead == 0
        assert kills >= 3, f"only {kills} kills: the test did not exercise crashes"
        # a worker killed between its ack and its event report leaves one task uncounted
        assert counted["succeeded"] + counted["duplicate"] >= TASKS - kills
        assert counted["dead"] == 0
        stopped = node.event("stopped")
        assert stopped["restarts"] >= kills - 3  # up to one pending restart per worker slot


def _tasks_total(exposition: str) -> dict[str, float]:
    families = {f.name: f for f in text_string_to_metric_families(exposition)}
    return {
        s.labels["outcome"]: s.value
        for s in families["fleetinfer_tasks"].samples
        if s.name.endswith("_total")
    }


def _kill_workers_until_done(node: NodeProcess, broker: Broker, done: object) -> int:
    rng = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 120
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not done after 120 s; {broker.stats()}\n{node.log()}"
        time.sleep(rng.uniform(0.6, 1.4))
        pids = node.health()["worker_pids"]
        if pids and not done():  # type: ignore[operator]
            os.kill(rng.choice(pids), signal.SIGKILL)
            kills += 1
    return kills
