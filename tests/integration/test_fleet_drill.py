"""Three nodes on one queue, as three machines: one vanishes, one gets a spot notice; then the
backlog policy decides how many run. Every task ends with exactly one succeeded result."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from fleetinfer.plan.policy import BacklogPolicy, desired_nodes
from fleetinfer.queue import open_broker
from tests.helpers.local_fleet import (
    TASKS,
    autoscaled_drill,
    kill_and_spot_drill,
    shm_namespaces_work,
)

VISIBILITY = "visibility_timeout_s=2&max_receives=20"


@pytest.fixture(params=["redis", "sqs"])
def queue(
    request: pytest.FixtureRequest, redis_url: str, unique_name: str, moto_endpoint: str
) -> Iterator[tuple[str, int]]:
    """A queue URL and how many tasks the drill sends through it."""
    if request.param == "redis":
        url, tasks = f"{redis_url}?queue={unique_name}&{VISIBILITY}", TASKS
    else:
        url = f"sqs://{unique_name}?region=us-east-1&endpoint_url={moto_endpoint}&{VISIBILITY}"
        tasks = TASKS
    yield url, tasks
    with open_broker(url) as broker:
        broker.purge()


@pytest.fixture
def results_url(postgres_url: str, unique_name: str) -> Iterator[str]:
    yield f"{postgres_url}?table={unique_name}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{unique_name}"')


def assert_every_task_succeeded_once(report: dict[str, object], tasks: int) -> None:
    counts = {k: report[k] for k in ("results", "succeeded", "correct", "duplicates", "lost")}
    assert counts == {"results": tasks, "succeeded": tasks, "correct": tasks, "duplicates": 0,
                      "lost": 0}, report  # fmt: skip
    assert report["dead_letters"] == 0, report


def test_a_vanished_node_and_a_spot_notice_lose_no_task_and_store_no_result_twice(
    queue: tuple[str, int], results_url: str, tmp_path: Path
) -> None:
    queue_url, tasks = queue
    report = kill_and_spot_drill(queue_url, results_url, tmp_path, tasks=tasks)
    print("fleet drill:", report)
    assert_every_task_succeeded_once(report, tasks)
    # the vanished node's in-flight tasks came back after the visibility timeout and ran again
    assert report["killed_node_tasks_run_again"] >= 1, report
    assert report["spot_exit_code"] == 0, report
    assert str(report["spot_reason"]).startswith("spot interruption notice"), report
    # node1 vanished (SIGKILL), node2 drained on the notice, node4 replaced node1, all drain at the end
    assert report["exit_codes"] == {"node1": -9, "node2": 0, "node3": 0, "node4": 0}, report
    if shm_namespaces_work():  # each node's segments lived in its own /dev/shm, not the host's
        segments = report["shm_segments_per_node"]
        assert all(segments.values()), report  # type: ignore[attr-defined]
        assert report["node_segments_in_host_shm"] == [], report


def test_the_backlog_policy_scales_the_fleet_out_and_back_in_from_the_real_queue_depth(
    redis_url: str, unique_name: str, results_url: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    queue_url = f"{redis_url}?queue={unique_name}&{VISIBILITY}"
    policy = BacklogPolicy(target_in_flight_per_node=600, floor_nodes=0, ceiling_nodes=3)
    caplog.set_level(logging.INFO, logger="fleetinfer.autoscale")
    try:
        report, decisions = autoscaled_drill(queue_url, results_url, tmp_path, policy=policy)
    finally:
        with open_broker(queue_url) as broker:
            broker.purge()
    assert_every_task_succeeded_once(report, TASKS)
    assert set(report["exit_codes"].values()) == {0}, report
    for decision in decisions:  # each decision is the policy's, on the depth read then
        assert decision.desired == desired_nodes(
            policy, queued=decision.queued, in_flight=decision.in_flight,
            nodes=decision.nodes, elapsed_s=decision.at_s,
        )  # fmt: skip
    assert [size for _, size in report["followed"]] == [d.desired for d in decisions]
    sizes = [d.desired for d in decisions]
    assert max(sizes) == 3, sizes
    assert sizes[-1] == 0, sizes
    lines = [r.getMessage() for r in caplog.records if r.name == "fleetinfer.autoscale"]
    changes = [d.line() for d in decisions if d.action != "hold"]
    assert lines == changes, (lines, changes)
    assert any(line.startswith("scale-out: 0 -> 1 nodes (queued=") for line in lines), lines
    assert any(line.startswith("scale-in: 1 -> 0 nodes (queued=0 in_flight=0") for line in lines)
