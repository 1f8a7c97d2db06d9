"""Rollout state machine and node reconcile, on a folder registry with node status written by
hand (no servers): the bad inputs that must give a clear error or a safe state."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest

from fleetinfer.errors import FleetinferError, RolloutError, UnknownModelError
from fleetinfer.registry import rollout
from fleetinfer.registry.attributes import Selector, detect_attributes, target_runs_on
from fleetinfer.registry.gates import Gate
from fleetinfer.registry.reconcile import Reconciler, desired_version, pinned_config
from fleetinfer.registry.registry import (
    Build,
    Desired,
    NodeStatus,
    Registry,
    Rule,
    VersionHealth,
    sha256_hex,
)

X86 = {"arch": "x86_64", "cpu_features": "avx2", "accelerators": ""}


def _registry(tmp_path: Path) -> Registry:
    (tmp_path / "registry").mkdir()
    return Registry.from_url(f"file://{tmp_path / 'registry'}")


def _build(registry: Registry, version: int, target: str = "cpu", data: bytes = b"onnx") -> None:
    base = f"models/m/{version}/{target}"
    registry.write("models/m/config.toml", b'name = "m"\nmax_batch_size = 1\n')
    registry.write(f"{base}/model.onnx", data)
    build = Build(
        model="m",
        version=version,
        target=target,
        precision="fp32",
        sha256=sha256_hex(data),
        size_bytes=len(data),
        pushed_at="",
        compiled=False,
    )
    registry.write(f"{base}/build.json", msgspec.json.encode(build))


def _report(
    registry: Registry,
    node: str,
    served: int,
    *,
    group: str = "a",
    requests: int = 0,
    errors: int = 0,
    age_s: float = 0.0,
    **attributes: str,
) -> None:
    health = {"m": {str(served): VersionHealth(requests, errors, 10.0)}}
    registry.write_status(
        NodeStatus(
            node=node,
            attributes={"node": node, "group": group, **X86, **attributes},
            served={"m": served},
            health=health,
            updated_at=time.time() - age_s,
        )
    )


@pytest.fixture
def fleet(tmp_path: Path) -> Registry:
    registry = _registry(tmp_path)
    _build(registry, 1)
    _build(registry, 2)
    registry.set_desired("m", Desired([Rule("*", 1)]))
    for node in ("n1", "n2", "n3"):
        _report(registry, node, 1)
    return registry


def _start(registry: Registry, **kw: object) -> rollout.Rollout:
    args: dict[str, object] = dict(
        group="group=a", canary=0.3, soak_s=0.0, gates=["error_rate<=0.01"]
    )
    args.update(kw)
    return rollout.start(registry, "m", 2, **args)  # type: ignore[arg-type]


def test_a_rollout_to_a_group_that_matches_no_node_is_refused(fleet: Registry) -> None:
    with pytest.raises(RolloutError, match="matches no live node"):
        _start(fleet, group="group=gpu")


def test_a_second_rollout_of_the_same_model_is_refused(fleet: Registry) -> None:
    _start(fleet)
    with pytest.raises(RolloutError, match="is loading"):
        _start(fleet)


def test_a_version_with_no_build_for_a_nodes_target_is_refused(fleet: Registry) -> None:
    _build(fleet, 5, target="cpu-arm64")
    with pytest.raises(RolloutError, match=r"cpu-arm64.*none of which runs"):
        rollout.start(fleet, "m", 5, group="*", canary=0.5, soak_s=0, gates=[])
    with pytest.raises(UnknownModelError, match="push it first"):
        rollout.start(fleet, "m", 6, group="*", canary=0.5, soak_s=0, gates=[])


def test_canary_nodes_are_chosen_deterministically(fleet: Registry) -> None:
    first = _start(fleet).stage_nodes
    rollout.abort(fleet, "m")
    assert _start(fleet).stage_nodes == first


def test_holding_gates_promote_stage_by_stage_to_the_whole_group(fleet: Registry) -> None:
    canary = _start(fleet).stage_nodes[0]
    _report(fleet, canary, 2, requests=100)
    assert rollout.advance(fleet, "m").state == "soaking"  # type: ignore[union-attr]
    _report(fleet, canary, 2, requests=300, errors=1)
    state = rollout.advance(fleet, "m")
    assert state is not None
    assert state.stage == 1
    assert len(state.stage_nodes) == 3
    assert fleet.desired("m").rules[-1] == Rule("group=a", 2)
    assert state.decisions[-1].numbers["error_rate"] == pytest.approx(1 / 200)
    for node in ("n1", "n2", "n3"):
        _report(fleet, node, 2, requests=50)
    rollout.advance(fleet, "m")
    assert rollout.advance(fleet, "m").state == "promoted"  # type: ignore[union-attr]


def test_a_failing_gate_rolls_the_canary_back_with_its_numbers(fleet: Registry) -> None:
    canary = _start(fleet).stage_nodes[0]
    _report(fleet, canary, 2, requests=10)
    rollout.advance(fleet, "m")
    _report(fleet, canary, 2, requests=110, errors=20)
    state = rollout.advance(fleet, "m")
    assert state is not None
    assert state.state == "rolled_back"
    assert "error_rate<=0.01" in state.decisions[-1].reason
    assert state.decisions[-1].numbers["error_rate"] == pytest.approx(0.2)
    assert fleet.desired("m").rules == [Rule("*", 1)]


def test_a_canary_node_killed_mid_soak_is_replaced_and_the_soak_restarts(fleet: Registry) -> None:
    canary = _start(fleet).stage_nodes[0]
    _report(fleet, canary, 2)
    rollout.advance(fleet, "m")
    _report(fleet, canary, 2, age_s=120)  # it stopped reporting
    state = rollout.advance(fleet, "m")
    assert state is not None
    assert state.state == "loading"
    assert state.stage_nodes != [canary]
    assert "stopped reporting" in state.decisions[-1].reason
    for node in ("n1", "n2", "n3"):
        _report(fleet, node, 1, age_s=120)
    assert rollout.advance(fleet, "m").state == "held"  # type: ignore[union-attr]
    assert rollout.abort(fleet, "m").state == "aborted"
    assert fleet.desired("m").rules == [Rule("*", 1)]


def test_promote_abort_and_rollback_move_the_state_by_hand(fleet: Registry) -> None:
    _start(fleet)
    assert rollout.promote(fleet, "m").stage == 1
    assert rollout.promote(fleet, "m").state == "promoted"
    with pytest.raises(RolloutError, match="no active rollout"):
        rollout.abort(fleet, "m")
    assert rollout.rollback(fleet, "m").state == "rolled_back"
    assert fleet.desired("m").rules == [Rule("*", 1)]


def test_a_registry_unreachable_mid_reconcile_leaves_the_node_serving(
    fleet: Registry, tmp_path: Path
) -> None:
    reloads: list[str] = []
    node = Reconciler(
        fleet, {"node": "n1", **X86}, tmp_path / "models", lambda m: reloads.append(m) or []
    )
    assert node.step()
    assert node.served == {"m": 1}
    (tmp_path / "registry").rename(tmp_path / "away")
    assert node.step() is False
    assert node.served == {"m": 1}
    assert reloads == ["m"]


def test_a_corrupted_download_is_refused_and_reported(fleet: Registry, tmp_path: Path) -> None:
    fleet.write("models/m/1/cpu/model.onnx", b"onnY")
    node = Reconciler(fleet, {"node": "n1", **X86}, tmp_path / "models", lambda m: [])
    node.step()
    assert node.served == {}
    assert "sha256" in node.errors["m"]
    assert not list((tmp_path / "models").rglob("*.onnx"))
    assert "sha256" in {s.node: s for s in fleet.statuses()}["n1"].errors["m"]


def test_a_version_that_fails_to_load_is_put_back_and_not_retried(
    fleet: Registry, tmp_path: Path
) -> None:
    calls: list[str] = []
    node = Reconciler(fleet, {"node": "n1", **X86}, tmp_path / "models", lambda m: [])
    node.step()
    node.reload = lambda m: calls.append(m) or [FleetinferError("bad graph")]  # type: ignore[func-returns-value]
    fleet.set_desired("m", Desired([Rule("*", 2)]))
    node.step()
    node.step()
    assert node.served == {"m": 1}
    assert "bad graph" in node.errors["m"]
    assert len(calls) == 2  # the failed load and the reload of what it had, once
    assert "versions = [1]" in (tmp_path / "models" / "m" / "config.toml").read_text()


def test_the_last_matching_rule_decides_the_version() -> None:
    desired = Desired([Rule("*", 1), Rule("group=b", 2), Rule("node=n7|n8", 3)])
    assert desired_version(desired, {"node": "n1", "group": "a"}) == 1
    assert desired_version(desired, {"node": "n2", "group": "b"}) == 2
    assert desired_version(desired, {"node": "n8", "group": "b"}) == 3


def test_selectors_match_labels_features_and_exclusions() -> None:
    node = {"arch": "x86_64", "cpu_features": "avx2 avx512_vnni", "lifecycle": "spot"}
    assert Selector.parse("arch=x86_64|aarch64,cpu_features~avx512_vnni").matches(node)
    assert not Selector.parse("lifecycle!=spot").matches(node)
    with pytest.raises(Exception, match="KEY=VALUE"):
        Selector.parse("group")


def test_an_arm64_build_never_runs_on_x86() -> None:
    assert not target_runs_on("cpu-arm64", X86)
    assert target_runs_on("cpu-arm64", {"arch": "aarch64"})
    assert not target_runs_on("cpu-avx512", X86)
    assert not target_runs_on("cuda", X86)


def test_attributes_are_detected_and_overridable() -> None:
    found = detect_attributes(
        "n1", labels={"group": "a"}, overrides={"lifecycle": "spot"}, imds_url=None
    )
    assert found["node"] == "n1"
    assert found["group"] == "a"
    assert found["lifecycle"] == "spot"
    assert found["arch"]


def test_a_gate_that_does_not_parse_says_what_is_expected() -> None:
    assert Gate.parse("latency_p95<=1.2x").relative
    with pytest.raises(RolloutError, match="METRIC<=VALUE"):
        Gate.parse("speed>>3")


def test_a_pinned_config_serves_one_version_with_its_sha256() -> None:
    text = b'name = "m"\n[version_policy]\npolicy = "latest"\n[versions.1]\nsha256 = "aa"\n'
    pinned = pinned_config(text, 4, "bb").decode()
    assert "latest" not in pinned
    assert "versions = [4]" in pinned
    assert '"aa"' not in pinned


def test_a_relative_gate_compares_with_the_baseline_and_holds_without_one() -> None:
    gate = Gate.parse("latency_p95<=1.2x")
    assert gate.check(11.0, 10.0) == (True, pytest.approx(12.0))
    assert gate.check(13.0, 10.0)[0] is False
    assert gate.check(13.0, None) == (True, 0.0)


def test_a_registry_object_that_does_not_decode_leaves_the_node_serving(
    fleet: Registry, tmp_path: Path
) -> None:
    node = Reconciler(fleet, {"node": "n1", **X86}, tmp_path / "models", lambda m: [])
    assert node.step()
    fleet.write("desired/m.json", b"{not json")
    assert node.step() is False
    assert node.served == {"m": 1}


def test_a_node_keeps_its_version_when_the_desired_one_has_no_build_for_it(
    fleet: Registry, tmp_path: Path
) -> None:
    node = Reconciler(fleet, {"node": "n1", **X86}, tmp_path / "models", lambda m: [])
    node.step()
    _build(fleet, 5, target="cpu-arm64")
    fleet.set_desired("m", Desired([Rule("*", 1), Rule("arch=x86_64", 5)]))
    node.step()
    assert node.served == {"m": 1}
    assert "no build for this node" in node.errors["m"]
    assert "cpu-arm64" in node.errors["m"]
