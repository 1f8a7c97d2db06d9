"""End to end: 3 nodes (`fleetinfer run`, shared model server) in 2 groups on one Redis queue, an
S3 registry (moto server), PostgreSQL results and 2,000 small CDNet tasks flowing while cdnet
v1 -> v2 (INT8 from `compile`) is rolled out with a canary, soaked and promoted, then a degraded
v3 is rolled back by the quality gate. No task fails or is lost; every result names its version;
v3 answered tasks on the canary node only; the rollback's numbers are in the log."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import boto3
import pytest

from fleetinfer.queue import open_broker
from fleetinfer.registry import rollout
from fleetinfer.registry.reconcile import Reconciler
from fleetinfer.registry.registry import Desired, Registry, Rule
from fleetinfer.results import TaskStatus, open_store
from fleetinfer.task import send_tasks
from tests.apps.harness import NodeProcess, wait_for
from tests.helpers.fleet import cdnet_repository

TASKS = 2000
GROUPS = {"n1": "a", "n2": "a", "n3": "b"}
GATES = ["error_rate<=0.01", "latency_p95<=10x", "quality>=0.97"]  # latency: loose (shared CI)


def _quality(registry: Registry, model: str, version: int, baseline: int) -> tuple[float, float]:
    return rollout.plugin_quality(registry, model, version, baseline, segments=2)


def _settle(registry: Registry, timeout_s: float = 120) -> rollout.Rollout:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = rollout.advance(registry, "cdnet", _quality)
        if state is not None and not state.active:
            return state
        time.sleep(0.2)
    raise AssertionError(f"rollout did not settle: {rollout.load(registry, 'cdnet')}")


def _serving(registry: Registry, version: int) -> bool:
    served = {s.node: s.served.get("cdnet") for s in registry.statuses()}
    return all(served.get(n) == version for n in GROUPS)


def test_a_fleet_promotes_v2_and_rolls_back_a_degraded_v3_without_losing_a_task(
    tmp_path: Path,
    moto_endpoint: str,
    redis_url: str,
    postgres_url: str,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    repo = cdnet_repository(tmp_path)
    bucket = unique_name.lower().replace("_", "-")[:60]
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    registry_url = f"s3://{bucket}/registry?endpoint_url={moto_endpoint}"
    registry = Registry.from_url(registry_url)
    for version in (1, 2, 3):
        registry.push(repo, "cdnet", version)
    registry.set_desired("cdnet", Desired([Rule("*", 1)]))
    queue_url = f"{redis_url}?queue={unique_name}&visibility_timeout_s=30"
    results_url = f"{postgres_url}?table={unique_name}"

    nodes = []
    for name, group in GROUPS.items():
        models = tmp_path / name
        Reconciler(registry, {"node": name, "arch": "x86_64"}, models, lambda m: []).step()
        monkeypatch.setenv("FLEETINFER_REGISTRY", registry_url)
        monkeypatch.setenv("FLEETINFER_NODE_NAME", name)
        monkeypatch.setenv("FLEETINFER_LABELS", f"label.group={group}")
        monkeypatch.setenv("FLEETINFER_REGISTRY_INTERVAL_S", "0.5")
        nodes.append(NodeProcess(
            "tests.apps.cdnet_jobs:app", queue_url, results_url, "--workers", "1",
            "--client", "shared", "--models", str(models), log_path=tmp_path / f"{name}.log",
        ))  # fmt: skip
    try:
        for node in nodes:
            node.event("ready", timeout_s=120)
        with open_broker(queue_url) as broker:
            task_ids = send_tasks(broker, "cdnet_window", [{"v": i % 7 / 7} for i in range(TASKS)])
        wait_for(lambda: _serving(registry, 1), 60, "every node reporting v1")

        rollout.start(registry, "cdnet", 2, group="*", canary=0.3, soak_s=3.0, gates=GATES)
        promoted = _settle(registry)
        assert promoted.state == "promoted", (promoted.decisions, registry.statuses())
        wait_for(lambda: _serving(registry, 2), 60, "every node serving v2")

        started = rollout.start(registry, "cdnet", 3, group="*", canary=0.3, soak_s=2.0,
                                gates=GATES)  # fmt: skip
        (canary,) = started.stage_nodes
        with caplog.at_level("INFO", logger="fleetinfer.rollout"):
            rolled_back = _settle(registry)
        assert rolled_back.state == "rolled_back", rolled_back.decisions
        assert rolled_back.decisions[-1].numbers["quality"] < 0.97
        assert "rolled_back" in caplog.text
        assert "quality=" in caplog.text
        wait_for(lambda: _serving(registry, 2), 60, "every node back on v2")

        with open_store(results_url) as store:
            wait_for(lambda: store.count() == TASKS, 240, "every task's result")
            results = [store.get(t) for t in task_ids]
            store.clear()
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait(60)
            node.close()
    assert all(r is not None and r.status is TaskStatus.SUCCEEDED for r in results)
    by_version = Counter(r.models for r in results if r is not None)
    assert all(m.startswith("cdnet@") for m in by_version), by_version
    assert by_version["cdnet@2"] > 0, by_version
    on_v3 = {r.value["node"] for r in results if r is not None and "3" in r.models}
    assert on_v3 <= {canary}, (on_v3, canary)
    print(f"\nresults by version: {dict(by_version)}; v3 ran on {on_v3 or 'no node'}")
    for decision in [*promoted.decisions, *rolled_back.decisions]:
        print(f"  {decision.action}: {decision.reason} {decision.numbers}")
