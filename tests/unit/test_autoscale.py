"""The backlog autoscaler feeds the queue's real depth to the policy and resizes the fleet."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fleetinfer.plan.autoscale import BacklogAutoscaler
from fleetinfer.plan.policy import BacklogPolicy
from fleetinfer.queue import open_broker


class CountingFleet:
    def __init__(self) -> None:
        self.nodes = 0
        self.resizes: list[int] = []

    def size(self) -> int:
        return self.nodes

    def scale_to(self, nodes: int) -> None:
        self.nodes = nodes
        self.resizes.append(nodes)


def test_the_fleet_grows_one_node_per_decision_then_shrinks_when_the_queue_empties(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fleetinfer.autoscale")
    policy = BacklogPolicy(target_in_flight_per_node=10, floor_nodes=0, ceiling_nodes=3)
    clock = iter(float(s) for s in range(0, 100, 2))
    fleet = CountingFleet()
    with open_broker(f"sqlite:///{tmp_path}/q.db") as broker:
        broker.send_batch([{"n": i} for i in range(25)])
        scaler = BacklogAutoscaler(policy, broker, fleet, clock=lambda: next(clock))
        decisions = [scaler.step() for _ in range(4)]  # 25 queued: 3 nodes, one per 2 s step
        broker.purge()
        decisions += [scaler.step() for _ in range(4)]
    assert [d.desired for d in decisions] == [1, 2, 3, 3, 2, 1, 0, 0]
    assert fleet.resizes == [1, 2, 3, 2, 1, 0]
    assert [d.queued for d in decisions[:4]] == [25] * 4
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "scale-out: 0 -> 1 nodes (queued=25 in_flight=0 elapsed_since_last=2.0s)"
    assert lines[3] == "scale-in: 3 -> 2 nodes (queued=0 in_flight=0 elapsed_since_last=2.0s)"
    assert len(lines) == 6  # a decision that holds is not logged
