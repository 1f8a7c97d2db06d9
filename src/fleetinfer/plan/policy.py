"""The backlog-per-node autoscaling policy: one function for the planner, the simulation and the
deployment renderers (KEDA's queue-length target, Application Auto Scaling's target tracking).

The fleet wants one node per `target_in_flight_per_node` tasks visible or in flight (the profile's
workers per node: every worker busy, none waiting), clamped to [floor, ceiling], and moves toward it
at most `scale_out_percent_per_min` (but at least `scale_out_min_nodes_per_min`) up and
`scale_in_percent_per_min` down, per minute:

    desired = clamp(ceil((queued + in_flight) / target_in_flight_per_node), floor, ceiling)
    step up   ≤ max(scale_out_min_nodes_per_min, nodes × scale_out_percent_per_min / 100) × minutes
    step down ≤ max(1, nodes × scale_in_percent_per_min / 100) × minutes

For a renderer: KEDA `ScaledObject` (aws-sqs-queue trigger) `queueLength` =
`target_in_flight_per_node`, `minReplicaCount` = floor, `maxReplicaCount` = ceiling, and the HPA
`behavior` policies from the two rates (`hpa_behavior`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fleetinfer.errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class BacklogPolicy:
    target_in_flight_per_node: float
    floor_nodes: int = 0
    ceiling_nodes: int = 1000
    scale_out_percent_per_min: float = 100.0
    scale_out_min_nodes_per_min: float = 10.0
    scale_in_percent_per_min: float = 10.0

    def __post_init__(self) -> None:
        if not self.target_in_flight_per_node > 0:
            raise ConfigError(
                f"target_in_flight_per_node must be > 0, got {self.target_in_flight_per_node!r}"
            )
        if not 0 <= self.floor_nodes <= self.ceiling_nodes:
            raise ConfigError(
                f"expected 0 <= floor_nodes <= ceiling_nodes, got {self.floor_nodes} and "
                f"{self.ceiling_nodes}"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "target_in_flight_per_node": self.target_in_flight_per_node,
            "floor_nodes": self.floor_nodes,
            "ceiling_nodes": self.ceiling_nodes,
            "scale_out_percent_per_min": self.scale_out_percent_per_min,
            "scale_out_min_nodes_per_min": self.scale_out_min_nodes_per_min,
            "scale_in_percent_per_min": self.scale_in_percent_per_min,
        }


def desired_nodes(
    policy: BacklogPolicy, *, queued: float, in_flight: float, nodes: int, elapsed_s: float
) -> int:
    """The node count the fleet moves to after `elapsed_s` at this backlog (docstring above)."""
    wanted = math.ceil(max(0.0, queued + in_flight) / policy.target_in_flight_per_node - 1e-9)
    wanted = min(policy.ceiling_nodes, max(policy.floor_nodes, wanted))
    minutes = max(0.0, elapsed_s) / 60.0
    if wanted > nodes:
        up = max(policy.scale_out_min_nodes_per_min, nodes * policy.scale_out_percent_per_min / 100)
        return min(wanted, nodes + max(1, math.floor(up * minutes)))
    if wanted < nodes:
        down = max(1.0, nodes * policy.scale_in_percent_per_min / 100)
        return max(wanted, nodes - max(1, math.floor(down * minutes)))
    return nodes


def scale_out_s(policy: BacklogPolicy, nodes: int, *, step_s: float = 10.0) -> float:
    """Seconds the policy takes from its floor to `nodes` (at most its ceiling) under a backlog
    that wants them all, deciding every `step_s`."""
    target, current, elapsed = min(nodes, policy.ceiling_nodes), policy.floor_nodes, 0.0
    while current < target:
        current = desired_nodes(
            policy,
            queued=float(target) * policy.target_in_flight_per_node,
            in_flight=0,
            nodes=current,
            elapsed_s=step_s,
        )
        elapsed += step_s
    return elapsed


def hpa_behavior(policy: BacklogPolicy) -> dict[str, Any]:
    """The Kubernetes HPA `behavior` block (KEDA `advanced.horizontalPodAutoscalerConfig`)."""
    return {
        "scaleUp": {
            "policies": [
                {"type": "Percent", "value": int(policy.scale_out_percent_per_min), "periodSeconds": 60},
                {"type": "Pods", "value": int(policy.scale_out_min_nodes_per_min), "periodSeconds": 60},
            ],
            "selectPolicy": "Max",
        },
        "scaleDown": {
            "policies": [
                {"type": "Percent", "value": int(policy.scale_in_percent_per_min), "periodSeconds": 60}
            ],
        },
    }  # fmt: skip


def policy_for(workers_per_node: float, *, floor_nodes: int, ceiling_nodes: int) -> BacklogPolicy:
    """The policy from a profile: target in flight per node = the node's workers."""
    return BacklogPolicy(
        target_in_flight_per_node=max(1.0, workers_per_node),
        floor_nodes=floor_nodes,
        ceiling_nodes=ceiling_nodes,
    )
