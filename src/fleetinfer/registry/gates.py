"""Rollout gates: `error_rate<=0.01`, `latency_p95<=1.2x` (relative to the baseline nodes),
`quality>=0.97` (the candidate's task metric over the baseline version's, on a labeled set).

`canary_numbers` reduces node status to the numbers the gates compare: the canary nodes' requests
and errors on the new version since the soak began (counters are cumulative; the rollout keeps
their values at soak start), the canary's p95 latency (worst canary node) and the baseline's
(median of the other nodes of the group on the version they serve).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping

import msgspec

from fleetinfer.errors import RolloutError
from fleetinfer.registry.registry import NodeStatus, VersionHealth

METRICS = ("error_rate", "latency_p95", "quality")
_GATE = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|>=)\s*([0-9.]+)\s*(x?)\s*$")


class Gate(msgspec.Struct, frozen=True):
    metric: str
    op: str
    value: float
    relative: bool  # `1.2x`: against the baseline's number

    @classmethod
    def parse(cls, text: str) -> Gate:
        match = _GATE.match(text)
        if match is None or match.group(1) not in METRICS:
            raise RolloutError(
                f"gate {text!r} is not METRIC<=VALUE or METRIC>=VALUE with METRIC one of "
                f"{', '.join(METRICS)} (e.g. 'error_rate<=0.01', 'latency_p95<=1.2x', "
                "'quality>=0.97')"
            )
        metric, op, value, x = match.groups()
        return cls(metric, op, float(value), bool(x))

    @property
    def text(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}{'x' if self.relative else ''}"

    def check(self, value: float, baseline: float | None) -> tuple[bool, float]:
        """(holds, the bound it was held to). A relative gate without a baseline (no other node
        served traffic) holds: there is nothing to compare with, and the decision says so
        (its `baseline_…` number is 0)."""
        if self.relative and not baseline:
            return True, 0.0
        bound = self.value * baseline if self.relative and baseline is not None else self.value
        holds = value <= bound + 1e-12 if self.op == "<=" else value >= bound - 1e-12
        return holds, bound


def health_of(status: NodeStatus, model: str, version: int) -> VersionHealth:
    return status.health.get(model, {}).get(str(version), VersionHealth())


def canary_numbers(
    statuses: Mapping[str, NodeStatus],
    model: str,
    version: int,
    canary: list[str],
    baseline: list[str],
    at_soak_start: Mapping[str, VersionHealth],
) -> dict[str, float]:
    requests = errors = 0
    p95s = []
    for node in canary:
        now = health_of(statuses[node], model, version)
        before = at_soak_start.get(node, VersionHealth())
        requests += now.requests - before.requests
        errors += now.errors - before.errors
        p95s.append(now.latency_p95_ms)
    base = [
        health_of(statuses[n], model, statuses[n].served.get(model, -1)).latency_p95_ms
        for n in baseline
        if n in statuses
    ]
    base = [b for b in base if b > 0]
    return {
        "canary_requests": float(requests),
        "canary_errors": float(errors),
        "error_rate": errors / requests if requests else 0.0,
        "latency_p95": max(p95s, default=0.0),
        "baseline_latency_p95": statistics.median(base) if base else 0.0,
    }
