"""Follow the backlog policy on a running fleet: read the queue's depth, ask `desired_nodes`, and
start or stop nodes to match, logging every change with the numbers that drove it.

The decision is `policy.desired_nodes` itself (the one the planner, the simulation and the KEDA /
Application Auto Scaling renderers use); this module only feeds it the real queue depth
(`broker.stats()`) and the seconds since the last decision, and tells a `Fleet` to resize.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fleetinfer.plan.policy import BacklogPolicy, desired_nodes
from fleetinfer.queue.base import Broker

log = logging.getLogger("fleetinfer.autoscale")


class Fleet(Protocol):
    """What the controller resizes: local processes in a test, an Auto Scaling group elsewhere."""

    def size(self) -> int: ...

    def scale_to(self, nodes: int) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleDecision:
    """One decision: the depth read, the nodes before and the nodes the policy wants."""

    at_s: float
    queued: int
    in_flight: int
    nodes: int
    desired: int

    @property
    def action(self) -> str:
        if self.desired > self.nodes:
            return "scale-out"
        return "scale-in" if self.desired < self.nodes else "hold"

    def line(self) -> str:
        return (
            f"{self.action}: {self.nodes} -> {self.desired} nodes (queued={self.queued} "
            f"in_flight={self.in_flight} elapsed_since_last={self.at_s:.1f}s)"
        )


class BacklogAutoscaler:
    """Each `step()` reads the queue, decides with the backlog policy and resizes the fleet."""

    def __init__(
        self,
        policy: BacklogPolicy,
        broker: Broker,
        fleet: Fleet,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy, self.broker, self.fleet, self._clock = policy, broker, fleet, clock
        self._last_s = clock()
        self.decisions: list[ScaleDecision] = []

    def step(self) -> ScaleDecision:
        now_s = self._clock()
        stats = self.broker.stats()
        queued = stats.visible + stats.delayed
        nodes = self.fleet.size()
        desired = desired_nodes(
            self.policy,
            queued=queued,
            in_flight=stats.in_flight,
            nodes=nodes,
            elapsed_s=now_s - self._last_s,
        )
        decision = ScaleDecision(
            at_s=now_s - self._last_s,
            queued=queued,
            in_flight=stats.in_flight,
            nodes=nodes,
            desired=desired,
        )
        self._last_s = now_s
        self.decisions.append(decision)
        if decision.action != "hold":
            log.info("%s", decision.line())
            self.fleet.scale_to(desired)
        return decision
