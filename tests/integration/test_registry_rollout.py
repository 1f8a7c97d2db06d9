"""Registry, reconcile and rollout with real model servers: three nodes in two groups, an S3
registry (moto server), cdnet v1 -> v2 (INT8 from `compile`) promoted, a degraded v3 rolled back
by the quality gate, and the bad inputs: a tampered artifact, a version that fails to load, a
registry that goes away."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest

from fleetinfer.errors import IntegrityError
from fleetinfer.registry import rollout
from fleetinfer.registry.registry import Desired, Registry, Rule
from tests.helpers.fleet import Node, cdnet_repository

GATES = ["error_rate<=0.01", "latency_p95<=10x", "quality>=0.97"]  # latency: loose (shared CI)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cdnet_repository(tmp_path_factory.mktemp("cdnet"))


@pytest.fixture
def registry(moto_endpoint: str, unique_name: str, repo: Path) -> Registry:
    bucket = unique_name.lower().replace("_", "-")[:60]
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    registry = Registry.from_url(f"s3://{bucket}/registry?endpoint_url={moto_endpoint}")
    for version in (1, 2, 3):
        registry.push(repo, "cdnet", version)
    registry.set_desired("cdnet", Desired([Rule("*", 1)]))
    return registry


@pytest.fixture
def fleet(registry: Registry, tmp_path: Path) -> Iterator[list[Node]]:
    groups = {"n1": "a", "n2": "a", "n3": "b"}
    nodes = [Node(registry, tmp_path, n, {"group": g}).start() for n, g in groups.items()]
    try:
        _until(lambda: all(n.reconciler.served.get("cdnet") == 1 for n in nodes), 60)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def _quality(registry: Registry, model: str, version: int, baseline: int) -> tuple[float, float]:
    return rollout.plugin_quality(registry, model, version, baseline, segments=2)


def _watch(registry: Registry, timeout_s: float = 90) -> rollout.Rollout:
    state: rollout.Rollout | None = None

    def settled() -> bool:
        nonlocal state
        state = rollout.advance(registry, "cdnet", _quality)
        return state is not None and not state.active

    _until(settled, timeout_s)
    assert state is not None
    return state


def test_a_pushed_version_is_immutable_and_listed_with_its_manifest(
    registry: Registry, repo: Path
) -> None:
    assert registry.versions("cdnet") == [1, 2, 3]
    (v2,) = registry.builds("cdnet", 2)
    assert (v2.precision, v2.compiled) == ("int8", True)
    manifest = registry.manifest(v2)
    assert manifest is not None
    assert manifest.artifact_sha256 == v2.sha256
    with pytest.raises(Exception, match="immutable"):
        registry.push(repo, "cdnet", 2)


def test_v2_is_promoted_after_a_canary_soak_with_no_failed_call(
    registry: Registry, fleet: list[Node]
) -> None:
    started = rollout.start(registry, "cdnet", 2, group="*", canary=0.3, soak_s=2.0, gates=GATES)
    assert len(started.stage_nodes) == 1
    final = _watch(registry)
    assert final.state == "promoted", final.decisions
    _until(lambda: all(n.reconciler.served["cdnet"] == 2 for n in fleet), 30)
    assert sum(n.failed for n in fleet) == 0
    assert all(n.answered[2] > 0 for n in fleet)
    assert final.decisions[-1].numbers["quality"] >= 0.97


def test_a_degraded_v3_is_rolled_back_by_the_quality_gate_and_ran_on_the_canary_only(
    registry: Registry, fleet: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    started = rollout.start(registry, "cdnet", 3, group="*", canary=0.3, soak_s=1.0, gates=GATES)
    (canary,) = started.stage_nodes
    with caplog.at_level("INFO", logger="fleetinfer.rollout"):
        final = _watch(registry)
    assert final.state == "rolled_back"
    assert "quality" in final.decisions[-1].reason
    assert final.decisions[-1].numbers["quality"] < 0.97
    assert "quality=" in caplog.text
    assert "rolled_back" in caplog.text
    _until(lambda: all(n.reconciler.served["cdnet"] == 1 for n in fleet), 30)
    assert [n.reconciler.node for n in fleet if n.answered[3]] == [canary]
    assert sum(n.failed for n in fleet) == 0


def test_a_tampered_artifact_is_refused_and_the_node_keeps_serving(
    registry: Registry, fleet: list[Node]
) -> None:
    (v2,) = registry.builds("cdnet", 2)
    key = "models/cdnet/2/cpu/model.onnx"
    registry.write(key, registry.read(key)[:-10] + b"0123456789")  # type: ignore[index]
    with pytest.raises(IntegrityError, match="sha256"):
        registry.fetch(v2, fleet[0].models)
    registry.set_desired("cdnet", Desired([Rule("*", 1), Rule("node=n1", 2)]))
    _until(lambda: "sha256" in fleet[0].reconciler.errors.get("cdnet", ""), 20)
    assert fleet[0].reconciler.served["cdnet"] == 1
    assert sum(n.failed for n in fleet) == 0


def test_a_version_that_fails_to_load_is_put_back_and_rolled_back(
    registry: Registry, fleet: list[Node], repo: Path
) -> None:
    broken = repo / "cdnet" / "9"
    broken.mkdir(exist_ok=True)
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    registry.push(repo, "cdnet", 9)
    rollout.start(registry, "cdnet", 9, group="group=a", canary=0.5, soak_s=1.0, gates=[])
    final = _watch(registry)
    assert final.state == "rolled_back"
    assert "load" in final.decisions[-1].reason
    assert all(n.reconciler.served["cdnet"] == 1 for n in fleet)
    assert sum(n.failed for n in fleet) == 0
