"""Staged rollout: a state in the registry (`rollouts/<model>.json`) moved by commands and by
`advance`, the controller step (`fleetinfer rollout watch` calls it in a loop; every command
calls it once).

```
 start ──▶ loading ──(every stage node serves N)──▶ soaking ──(soak over, gates hold)──▶ loading
   │          │                                       │            (next stage)   ...──▶ promoted
   │          │                                       ├─(a gate fails)──────────────▶ rolled_back
   │          └─(a stage node failed to load N)───────┴────────────────────────────▶ rolled_back
   │          a stage node went silent: replaced by the next node of the group, soak restarts;
   │          none left ──▶ held (operator: promote, abort)
 promote: the next stage now, without waiting for the soak or the gates (logged as manual)
 abort: the pins go, the group serves what it served before ──▶ aborted
 rollback (after promoted too): the desired rules before the rollout come back ──▶ rolled_back
```

Stages are fractions of the group's nodes, the canary first (`--canary 0.1` gives `[0.1, 1.0]`):
the nodes of a stage are the first `ceil(fraction × n)` of the group in a deterministic order
(sha256 of model, version and node id), pinned by a `node=a|b` rule after the rules that were there
before; the last stage replaces the pins with one rule for the group. Every decision is kept in
the state with its numbers and logged.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable

import msgspec

from fleetinfer.errors import RolloutError, UnknownModelError
from fleetinfer.registry.attributes import Selector
from fleetinfer.registry.gates import Gate, canary_numbers, health_of
from fleetinfer.registry.reconcile import build_for, desired_version, pinned_config
from fleetinfer.registry.registry import Desired, NodeStatus, Registry, Rule, VersionHealth, now_iso

log = logging.getLogger("fleetinfer.rollout")
ACTIVE = ("loading", "soaking", "held")
STALE_AFTER_S = 30.0

# (registry, model, candidate version, baseline version) -> (candidate metric, baseline metric)
QualityCheck = Callable[[Registry, str, int, int], tuple[float, float]]


class Decision(msgspec.Struct, frozen=True):
    at: str
    action: str
    reason: str
    numbers: dict[str, float] = msgspec.field(default_factory=dict)


class Rollout(msgspec.Struct, kw_only=True):
    model: str
    version: int
    group: str
    gates: list[Gate]
    stages: list[float]
    soak_s: float
    baseline_rules: list[Rule]
    order: list[str]  # the group's nodes, canary first
    state: str = "loading"
    stage: int = 0
    stage_nodes: list[str] = msgspec.field(default_factory=list)
    soak_from: float | None = None
    at_soak_start: dict[str, VersionHealth] = msgspec.field(default_factory=dict)
    baseline_p95_ms: float = 0.0
    quality: dict[str, float] = msgspec.field(default_factory=dict)
    stale_after_s: float = STALE_AFTER_S
    decisions: list[Decision] = msgspec.field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def decide(self, action: str, reason: str, **numbers: float) -> None:
        self.decisions.append(Decision(now_iso(), action, reason, numbers))
        shown = " ".join(f"{k}={v:.4g}" for k, v in numbers.items())
        log.info("rollout %s v%d: %s: %s %s", self.model, self.version, action, reason, shown)


def _key(model: str) -> str:
    return f"rollouts/{model}.json"


def load(registry: Registry, model: str) -> Rollout | None:
    data = registry.read(_key(model))
    return None if data is None else msgspec.json.decode(data, type=Rollout)


def save(registry: Registry, rollout: Rollout) -> None:
    registry.write(_key(rollout.model), msgspec.json.encode(rollout))


def live_statuses(registry: Registry, stale_after_s: float) -> dict[str, NodeStatus]:
    now = time.time()
    return {s.node: s for s in registry.statuses() if now - s.updated_at <= stale_after_s}


def start(
    registry: Registry,
    model: str,
    version: int,
    *,
    group: str,
    canary: float,
    soak_s: float,
    gates: list[str],
    stale_after_s: float = STALE_AFTER_S,
) -> Rollout:
    """Pin the canary nodes of `group` to `version`; refused (`RolloutError`) when another
    rollout of the model runs, no live node matches the group, or a node has no build."""
    current = load(registry, model)
    if current is not None and current.active:
        raise RolloutError(
            f"a rollout of {model} to version {current.version} is {current.state}: promote, "
            f"abort or roll it back before starting another (`fleetinfer rollout status {model}`)"
        )
    if not 0 < canary <= 1:
        raise RolloutError(f"--canary must be a fraction in (0, 1], got {canary}")
    parsed = [Gate.parse(g) for g in gates]
    nodes = _group_nodes(registry, group, stale_after_s)
    _check_builds(registry, model, version, nodes)
    rollout = Rollout(
        model=model,
        version=version,
        group=group,
        gates=parsed,
        stages=[canary, 1.0] if canary < 1 else [1.0],
        soak_s=soak_s,
        baseline_rules=registry.desired(model).rules,
        order=sorted(nodes, key=lambda n: _rank(model, version, n)),
        stale_after_s=stale_after_s,
    )
    _enter_stage(registry, rollout, 0, f"started for group {group!r} ({len(nodes)} nodes)")
    return rollout


def _group_nodes(registry: Registry, group: str, stale_after_s: float) -> dict[str, NodeStatus]:
    selector = Selector.parse(group)
    live = live_statuses(registry, stale_after_s)
    nodes = {n: s for n, s in live.items() if selector.matches(s.attributes)}
    if not nodes:
        raise RolloutError(
            f"group {group!r} matches no live node (of {len(live)} reporting: "
            f"{sorted(live) or 'none'}): check the selector against `fleetinfer registry nodes`"
        )
    return nodes


def _check_builds(
    registry: Registry, model: str, version: int, nodes: dict[str, NodeStatus]
) -> None:
    builds = registry.builds(model, version)
    if not builds:
        raise UnknownModelError(
            f"{model} version {version} is not in the registry {registry.url}: push it first"
        )
    missing = [n for n, s in nodes.items() if build_for(builds, s.attributes) is None]
    if missing:
        raise RolloutError(
            f"{model} version {version} has builds for {[b.target for b in builds]}, none of "
            f"which runs on {sorted(missing)}: compile and push a build for their target"
        )


def _rank(model: str, version: int, node: str) -> str:
    return hashlib.sha256(f"{model}:{version}:{node}".encode()).hexdigest()


def _enter_stage(
    registry: Registry, rollout: Rollout, stage: int, reason: str, **numbers: float
) -> None:
    rollout.stage, rollout.state, rollout.soak_from = stage, "loading", None
    fraction = rollout.stages[stage]
    count = max(1, math.ceil(fraction * len(rollout.order)))
    rollout.stage_nodes = rollout.order[:count]
    if fraction >= 1.0:
        rules = [r for r in rollout.baseline_rules if r.selector != rollout.group]
        rules.append(Rule(rollout.group, rollout.version))
    else:
        pin = Rule("node=" + "|".join(rollout.stage_nodes), rollout.version)
        rules = [*rollout.baseline_rules, pin]
    registry.set_desired(rollout.model, Desired(rules))
    numbers.update(fraction=fraction, nodes=len(rollout.stage_nodes))
    rollout.decide(f"stage {stage}", reason, **numbers)
    save(registry, rollout)


# -- the controller step ---------------------------------------------------------------------


def advance(registry: Registry, model: str, quality: QualityCheck | None = None) -> Rollout | None:
    """Move an active rollout one step from node status; returns its state (None: none)."""
    rollout = load(registry, model)
    if rollout is None or not rollout.active:
        return rollout
    statuses = live_statuses(registry, rollout.stale_after_s)
    if not _replace_lost_nodes(registry, rollout, statuses):
        return rollout
    failed = [
        n
        for n in rollout.stage_nodes
        if f"version {rollout.version}:" in statuses[n].errors.get(model, "")
    ]
    if failed:
        reason = statuses[failed[0]].errors[model]
        _roll_back(registry, rollout, f"gate load failed on {failed}: {reason}")
    elif rollout.state == "loading":
        _start_soak_when_loaded(registry, rollout, statuses)
    elif time.time() - (rollout.soak_from or 0.0) >= rollout.soak_s:
        _judge(registry, rollout, statuses, quality)
    return rollout


def _replace_lost_nodes(
    registry: Registry, rollout: Rollout, statuses: dict[str, NodeStatus]
) -> bool:
    """Stage nodes that stopped reporting go; the next live group node takes their place and the
    soak restarts. False (state `held`) when no live node is left to take it."""
    lost = [n for n in rollout.stage_nodes if n not in statuses]
    if not lost:
        return True
    rollout.order = [n for n in rollout.order if n not in lost] + lost
    live_order = [n for n in rollout.order if n in statuses]
    if not live_order:
        rollout.state = "held"
        rollout.decide("hold", f"stage nodes {lost} stopped reporting and no live node is left")
        save(registry, rollout)
        return False
    rollout.order = live_order + [n for n in rollout.order if n not in statuses]
    _enter_stage(
        registry, rollout, rollout.stage, f"stage nodes {lost} stopped reporting: soak restarts"
    )
    return False


def _start_soak_when_loaded(
    registry: Registry, rollout: Rollout, statuses: dict[str, NodeStatus]
) -> None:
    if any(statuses[n].served.get(rollout.model) != rollout.version for n in rollout.stage_nodes):
        return
    rollout.state, rollout.soak_from = "soaking", time.time()
    rollout.at_soak_start = {
        n: health_of(statuses[n], rollout.model, rollout.version) for n in rollout.stage_nodes
    }
    others = [n for n in rollout.order if n not in rollout.stage_nodes and n in statuses]
    if others:
        rollout.baseline_p95_ms = canary_numbers(
            statuses, rollout.model, rollout.version, [], others, {}
        )["baseline_latency_p95"]
    rollout.decide("soak", f"{rollout.stage_nodes} serve v{rollout.version}", soak_s=rollout.soak_s)
    save(registry, rollout)


def _judge(
    registry: Registry,
    rollout: Rollout,
    statuses: dict[str, NodeStatus],
    quality: QualityCheck | None,
) -> None:
    others = [n for n in rollout.order if n not in rollout.stage_nodes and n in statuses]
    numbers = canary_numbers(
        statuses,
        rollout.model,
        rollout.version,
        rollout.stage_nodes,
        others,
        rollout.at_soak_start,
    )
    numbers["baseline_latency_p95"] = numbers["baseline_latency_p95"] or rollout.baseline_p95_ms
    if any(g.metric == "quality" for g in rollout.gates) and not rollout.quality:
        rollout.quality = _quality(registry, rollout, quality)
    numbers.update(rollout.quality)
    failed = _failed_gates(rollout.gates, numbers)
    if failed:
        _roll_back(registry, rollout, f"gates failed: {', '.join(failed)}", **numbers)
    elif rollout.stage + 1 < len(rollout.stages):
        _enter_stage(
            registry, rollout, rollout.stage + 1, "gates held: " + _texts(rollout), **numbers
        )
    else:
        rollout.state = "promoted"
        rollout.decide("promoted", "gates held: " + _texts(rollout), **numbers)
        save(registry, rollout)


def _texts(rollout: Rollout) -> str:
    return ", ".join(g.text for g in rollout.gates) or "no gates"


def _failed_gates(gates: list[Gate], numbers: dict[str, float]) -> list[str]:
    failed = []
    for gate in gates:
        baseline = numbers.get(f"baseline_{gate.metric}") or None
        holds, bound = gate.check(numbers[gate.metric], baseline)
        if not holds:
            failed.append(
                f"{gate.text} ({gate.metric}={numbers[gate.metric]:.4g}, bound {bound:.4g})"
            )
    return failed


def _quality(registry: Registry, rollout: Rollout, check: QualityCheck | None) -> dict[str, float]:
    canary = rollout.stage_nodes[0]
    status = {s.node: s for s in registry.statuses()}.get(canary)
    attributes = status.attributes if status else {}
    baseline = desired_version(Desired(rollout.baseline_rules), attributes)
    if baseline is None:
        raise RolloutError(
            f"the quality gate needs a baseline version of {rollout.model} for {canary}, and "
            "the group served none before: drop the quality gate for a first rollout"
        )
    candidate_metric, baseline_metric = (check or plugin_quality)(
        registry, rollout.model, rollout.version, baseline
    )
    ratio = candidate_metric / baseline_metric if baseline_metric else 0.0
    return {
        "quality": ratio,
        "quality_candidate": candidate_metric,
        "quality_baseline": baseline_metric,
    }


def plugin_quality(
    registry: Registry,
    model: str,
    version: int,
    baseline: int,
    *,
    plugin: str = "roadchange",
    segments: int = 20,
    seed: int = 424242,
) -> tuple[float, float]:
    """Both versions' task metric through the workload's evaluator plugin, on this machine."""
    import tempfile
    from pathlib import Path

    from fleetinfer.compile.plugins import load_plugin
    from fleetinfer.registry.attributes import detect_attributes
    from fleetinfer.server.repository import ModelVersion, parse_config
    from fleetinfer.server.session import OrtModel

    found = load_plugin(plugin)
    if found is None:
        raise RolloutError(f"the quality gate's evaluator plugin {plugin!r} is not installed")
    evaluator = found.evaluator(segments=segments, seed=seed)
    here = detect_attributes("controller", imds_url=None)
    metrics = []
    with tempfile.TemporaryDirectory() as tmp:
        for v in (version, baseline):
            build = build_for(registry.builds(model, v), here)
            if build is None:
                raise RolloutError(f"{model} v{v} has no build that runs on this controller")
            fetched = registry.fetch(build, Path(tmp))
            pinned = pinned_config(fetched.config_toml, v, build.sha256)
            (Path(tmp) / "config.toml").write_bytes(pinned)
            config = parse_config(Path(tmp) / "config.toml")
            ort_model = OrtModel(ModelVersion(config=config, version=v, path=fetched.artifact))
            metrics.append(evaluator.evaluate(ort_model)[evaluator.metric])
    return metrics[0], metrics[1]


def _roll_back(registry: Registry, rollout: Rollout, reason: str, **numbers: float) -> None:
    registry.set_desired(rollout.model, Desired(rollout.baseline_rules))
    rollout.state = "rolled_back"
    rollout.decide("rolled_back", reason, **numbers)
    save(registry, rollout)


# -- the operator's commands -----------------------------------------------------------------


def _active(registry: Registry, model: str) -> Rollout:
    rollout = load(registry, model)
    if rollout is None or not rollout.active:
        state = "none" if rollout is None else rollout.state
        raise RolloutError(f"no active rollout of {model} (last: {state}): start one first")
    return rollout


def promote(registry: Registry, model: str) -> Rollout:
    """The next stage now (or promoted, from the last), without waiting for soak and gates."""
    rollout = _active(registry, model)
    if rollout.stage + 1 < len(rollout.stages):
        _enter_stage(registry, rollout, rollout.stage + 1, "promoted by hand")
    else:
        rollout.state = "promoted"
        rollout.decide("promoted", "promoted by hand")
        save(registry, rollout)
    return rollout


def abort(registry: Registry, model: str) -> Rollout:
    rollout = _active(registry, model)
    registry.set_desired(model, Desired(rollout.baseline_rules))
    rollout.state = "aborted"
    rollout.decide("aborted", "aborted by hand: the group serves what it served before")
    save(registry, rollout)
    return rollout


def rollback(registry: Registry, model: str) -> Rollout:
    """The desired rules from before the last rollout, whatever its state."""
    rollout = load(registry, model)
    if rollout is None:
        raise RolloutError(f"{model} has no rollout to roll back")
    _roll_back(registry, rollout, "rolled back by hand")
    return rollout
