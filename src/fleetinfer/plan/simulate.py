"""A discrete-event simulation of a fleet running a plan: arrivals, the backlog policy scaling the
pools, spot interruptions per node (a notice, the drain, redelivery after the visibility timeout),
node start-up (launch and model load), and each pool's per-node throughput in its serving mode.

Nodes are simulated one by one (launch, ready, interruption notice, termination are events on a
heap; each spot node draws its own interruption time); tasks are a fluid, served in time steps of
`step_s` from a FIFO of arrival cohorts, so a day of 5,000 nodes and hundreds of millions of tasks
runs in seconds. A task's latency is its wait in the queue plus its wall time on the node. At an
interruption notice the node takes no new task; of its in-flight tasks, those longer than the
notice are lost and come back to the queue after the visibility timeout (`tasks_redelivered`).
The autoscaler (`fleetinfer.plan.policy.desired_nodes`) sets the fleet's size every step; the
pools share it in the plan's proportions. A replacement of a spot node is on demand with the pool's
`on_demand_fallback` probability. Everything random comes from one generator seeded by `seed`.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fleetinfer.errors import InputError
from fleetinfer.plan.policy import BacklogPolicy, desired_nodes

READY, NOTICE, GONE = 0, 1, 2


@dataclass(frozen=True, slots=True)
class SimPool:
    name: str
    purchase: str
    max_nodes: int
    tasks_per_min: float
    workers: int
    task_wall_s: float
    startup_s: float
    spot_usd_per_hour: float
    on_demand_usd_per_hour: float
    interruptions_per_hour: float
    on_demand_fallback: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    hours: float = 24.0
    seed: int = 0
    step_s: float = 10.0
    backlog: float = 0.0
    arrivals_per_min: Sequence[tuple[float, float]] = ((0.0, 0.0),)  # (from s, tasks/min)
    visibility_timeout_s: float = 300.0
    notice_s: float = 120.0


@dataclass(slots=True)
class _Node:
    pool: int
    usd_per_hour: float
    launched_at: float
    state: str = "starting"  # starting | running | draining | gone


@dataclass(slots=True)
class _PoolState:
    starting: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    node_s: float = 0.0
    cost_usd: float = 0.0
    interruptions: int = 0
    done: float = 0.0


@dataclass(frozen=True, slots=True)
class SimResult:
    tasks_arrived: float
    tasks_done: float
    tasks_left: float
    latency_p95_s: float
    latency_p50_s: float
    cost_usd: float
    interruptions: int
    tasks_redelivered: float
    peak_nodes: int
    backlog_cleared_s: float | None
    per_pool: Mapping[str, Mapping[str, float]]
    hours: float
    seed: int

    @property
    def tasks_per_usd(self) -> float:
        return self.tasks_done / self.cost_usd if self.cost_usd else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "hours": self.hours,
            "seed": self.seed,
            "tasks_arrived": round(self.tasks_arrived),
            "tasks_done": round(self.tasks_done),
            "tasks_left": round(self.tasks_left),
            "latency_p50_s": round(self.latency_p50_s, 1),
            "latency_p95_s": round(self.latency_p95_s, 1),
            "cost_usd": round(self.cost_usd, 2),
            "tasks_per_usd": round(self.tasks_per_usd, 1),
            "interruptions_survived": self.interruptions,
            "tasks_redelivered": round(self.tasks_redelivered),
            "tasks_lost": 0,
            "peak_nodes": self.peak_nodes,
            "backlog_cleared_h": None
            if self.backlog_cleared_s is None
            else round(self.backlog_cleared_s / 3600, 3),
            "pools": {k: {n: round(v, 2) for n, v in p.items()} for k, p in self.per_pool.items()},
        }


class FleetSimulation:
    """One run; `run()` returns the result. Split into the steps of one time step."""

    def __init__(self, pools: Sequence[SimPool], policy: BacklogPolicy, config: SimConfig) -> None:
        if not pools:
            raise InputError("the plan has no pools to simulate")
        self.pools, self.policy, self.config = list(pools), policy, config
        self.rng = np.random.default_rng(config.seed)
        self.state = [_PoolState() for _ in pools]
        self.nodes: list[_Node] = []
        self.events: list[tuple[float, int, int]] = []  # (time, kind, node id)
        self.queue: deque[list[float]] = deque()  # [arrival s, count]
        self.redeliveries: list[tuple[float, float]] = []  # (visible again at s, count)
        self.in_flight = 0.0
        self.last_busy = 0.0  # share of the running capacity used in the last step
        self.latencies: list[np.ndarray[Any, Any]] = []
        self.weights_done: list[np.ndarray[Any, Any]] = []
        self.arrived = self.redelivered = 0.0
        self.peak = 0
        self.cleared_at: float | None = None
        self.now = 0.0
        if config.backlog > 0:
            self.queue.append([0.0, float(config.backlog)])
            self.arrived += config.backlog

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> SimResult:
        end_s, step = self.config.hours * 3600.0, self.config.step_s
        while self.now < end_s:
            self._events_until(self.now)
            self._arrivals(step)
            self._release_redeliveries()
            self._serve(step)
            self._scale(step)  # on what the autoscaler sees: the tasks left waiting, in flight
            self.now += step
        return self._result(end_s)

    def _events_until(self, t: float) -> None:
        while self.events and self.events[0][0] <= t:
            at, kind, node_id = heapq.heappop(self.events)
            node = self.nodes[node_id]
            if node.state == "gone":
                continue
            if kind == READY and node.state == "starting":
                self._ready(node_id, node, at)
            elif kind == NOTICE and node.state in ("starting", "running"):
                self._notice(node_id, node, at)
            elif kind == GONE:
                self._retire(node, at)

    def _arrivals(self, step: float) -> None:
        rate = _rate_at(self.config.arrivals_per_min, self.now)
        if rate > 0:
            count = float(self.rng.poisson(rate * step / 60.0))
            if count:
                self.queue.append([self.now, count])
                self.arrived += count

    def _release_redeliveries(self) -> None:
        while self.redeliveries and self.redeliveries[0][0] <= self.now:
            _, count = heapq.heappop(self.redeliveries)
            self.queue.appendleft([self.now - self.config.visibility_timeout_s, count])

    # -- scaling -------------------------------------------------------------------------------

    def _active(self) -> int:
        return sum(len(s.starting) + len(s.running) for s in self.state)

    def _scale(self, step: float) -> None:
        queued = sum(c[1] for c in self.queue)
        current = self._active()
        wanted = desired_nodes(
            self.policy, queued=queued, in_flight=self.in_flight, nodes=current, elapsed_s=step
        )
        for index, target in enumerate(split_nodes(wanted, [p.max_nodes for p in self.pools])):
            have = len(self.state[index].starting) + len(self.state[index].running)
            for _ in range(target - have):
                self._launch(index)
            for _ in range(have - target):
                self._scale_in(index)
        self.peak = max(self.peak, self._active())

    def _launch(self, index: int) -> None:
        pool = self.pools[index]
        spot = pool.purchase == "spot" and self.rng.random() >= pool.on_demand_fallback
        price = pool.spot_usd_per_hour if spot else pool.on_demand_usd_per_hour
        node_id = len(self.nodes)
        self.nodes.append(_Node(index, price, self.now))
        self.state[index].starting.append(node_id)
        heapq.heappush(self.events, (self.now + pool.startup_s, READY, node_id))
        if spot and pool.interruptions_per_hour > 0:
            wait_s = self.rng.exponential(3600.0 / pool.interruptions_per_hour)
            heapq.heappush(self.events, (self.now + wait_s, NOTICE, node_id))

    def _scale_in(self, index: int) -> None:
        state = self.state[index]
        node_id = state.starting.pop() if state.starting else state.running.pop()
        self._retire(self.nodes[node_id], self.now)

    # -- node events ---------------------------------------------------------------------------

    def _ready(self, node_id: int, node: _Node, at: float) -> None:
        state = self.state[node.pool]
        state.starting.remove(node_id)
        state.running.append(node_id)
        node.state = "running"

    def _notice(self, node_id: int, node: _Node, at: float) -> None:
        """The 2-minute notice: stop taking tasks; in-flight tasks longer than it are lost."""
        state, pool = self.state[node.pool], self.pools[node.pool]
        state.interruptions += 1
        if node.state == "running":
            state.running.remove(node_id)
            busy = self.last_busy
            lost = (
                busy
                * pool.workers
                * max(0.0, pool.task_wall_s - self.config.notice_s)
                / pool.task_wall_s
            )
            if lost > 0:
                self.redelivered += lost
                state.done -= lost
                heapq.heappush(self.redeliveries, (at + self.config.visibility_timeout_s, lost))
        else:
            state.starting.remove(node_id)
        node.state = "draining"
        heapq.heappush(self.events, (at + self.config.notice_s, GONE, node_id))

    def _retire(self, node: _Node, at: float) -> None:
        """Scaled in, or gone 2 minutes after its notice: billed until `at`."""
        self._bill(node, at)
        node.state = "gone"

    def _bill(self, node: _Node, at: float) -> None:
        state = self.state[node.pool]
        seconds = max(0.0, at - node.launched_at)
        state.node_s += seconds
        state.cost_usd += seconds * node.usd_per_hour / 3600.0

    # -- serving -------------------------------------------------------------------------------

    def _serve(self, step: float) -> None:
        capacity_by_pool = [len(s.running) * p.tasks_per_min * step / 60.0
                            for p, s in zip(self.pools, self.state, strict=True)]  # fmt: skip
        capacity = sum(capacity_by_pool)
        served = self._take(capacity)
        self.last_busy = served / capacity if capacity else 0.0
        self.in_flight = sum(len(s.running) * p.workers
                             for p, s in zip(self.pools, self.state, strict=True)) * self.last_busy  # fmt: skip
        for index, cap in enumerate(capacity_by_pool):
            if capacity:
                self.state[index].done += served * cap / capacity
        if self.cleared_at is None and self.config.backlog and not self.queue and served < capacity:
            self.cleared_at = self.now

    def _take(self, capacity: float) -> float:
        taken, wall = 0.0, self._mean_wall()
        arrivals, counts = [], []
        while self.queue and taken < capacity:
            cohort = self.queue[0]
            count = min(cohort[1], capacity - taken)
            arrivals.append(cohort[0])
            counts.append(count)
            taken += count
            cohort[1] -= count
            if cohort[1] <= 1e-9:
                self.queue.popleft()
        if counts:
            self.latencies.append(self.now - np.asarray(arrivals) + wall)
            self.weights_done.append(np.asarray(counts))
        return taken

    def _mean_wall(self) -> float:
        walls = [
            (len(s.running), p.task_wall_s) for p, s in zip(self.pools, self.state, strict=True)
        ]
        total = sum(n for n, _ in walls)
        return sum(n * w for n, w in walls) / total if total else self.pools[0].task_wall_s

    # -- the result ----------------------------------------------------------------------------

    def _result(self, end_s: float) -> SimResult:
        for node in self.nodes:
            if node.state != "gone":
                self._bill(node, end_s)
        latencies, weights = _positive(self.latencies, self.weights_done)
        per_pool = {
            f"{p.name} ({p.purchase})": {
                "node_hours": s.node_s / 3600.0,
                "cost_usd": s.cost_usd,
                "tasks_done": s.done,
                "interruptions": s.interruptions,
            }
            for p, s in zip(self.pools, self.state, strict=True)
        }
        done = sum(s.done for s in self.state)
        return SimResult(
            tasks_arrived=self.arrived,
            tasks_done=done,
            tasks_left=max(0.0, self.arrived - done),
            latency_p95_s=weighted_percentile(latencies, weights, 0.95),
            latency_p50_s=weighted_percentile(latencies, weights, 0.5),
            cost_usd=sum(s.cost_usd for s in self.state),
            interruptions=sum(s.interruptions for s in self.state),
            tasks_redelivered=self.redelivered,
            peak_nodes=self.peak,
            backlog_cleared_s=self.cleared_at,
            per_pool=per_pool,
            hours=self.config.hours,
            seed=self.config.seed,
        )


def _positive(
    latencies: list[np.ndarray[Any, Any]], weights: list[np.ndarray[Any, Any]]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    if not latencies:
        return np.zeros(0), np.zeros(0)
    values, counts = np.concatenate(latencies), np.concatenate(weights)
    keep = values > 0
    return values[keep], counts[keep]


def weighted_percentile(
    values: np.ndarray[Any, Any], weights: np.ndarray[Any, Any], q: float
) -> float:
    """The q-quantile of `values` counted `weights` times each (0.0 when there are none)."""
    if values.size == 0 or weights.sum() <= 0:
        return 0.0
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    index = int(np.searchsorted(cumulative, q * cumulative[-1]))
    return float(values[order][min(index, values.size - 1)])


def split_nodes(total: int, caps: Sequence[int]) -> list[int]:
    """`total` nodes over pools in proportion to their caps, largest remainders first."""
    whole = sum(caps)
    if whole <= 0 or total <= 0:
        return [0] * len(caps)
    total = min(total, whole)
    exact = [total * cap / whole for cap in caps]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(caps)), key=lambda i: counts[i] - exact[i])
    for index in by_remainder[: total - sum(counts)]:
        counts[index] += 1
    return counts


def _rate_at(schedule: Sequence[tuple[float, float]], t: float) -> float:
    rate = 0.0
    for start_s, per_min in schedule:
        if start_s <= t:
            rate = per_min
        else:
            break
    return rate


def simulate(pools: Sequence[SimPool], policy: BacklogPolicy, config: SimConfig) -> SimResult:
    return FleetSimulation(pools, policy, config).run()


def pools_from_plan(plan: Mapping[str, Any]) -> list[SimPool]:
    """The pools of a `fleetinfer plan --json` document."""
    try:
        return [
            SimPool(
                name=str(p["instance"]),
                purchase=str(p["purchase"]),
                max_nodes=int(p["nodes"]),
                tasks_per_min=float(p["tasks_per_min"]),
                workers=int(p["workers"]),
                task_wall_s=float(p["task_wall_s"]),
                startup_s=float(p["startup_s"]),
                spot_usd_per_hour=float(p["spot_usd_per_hour"]),
                on_demand_usd_per_hour=float(p["on_demand_usd_per_hour"]),
                interruptions_per_hour=float(p["interruptions_per_hour"]),
                on_demand_fallback=float(p["on_demand_fallback"]),
            )
            for p in plan["pools"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"expected the JSON of `fleetinfer plan --json` (a 'pools' list with instance, "
            f"purchase, nodes, tasks_per_min, workers, …): {exc!r}"
        ) from exc


def policy_from_plan(plan: Mapping[str, Any], **overrides: Any) -> BacklogPolicy:
    try:
        return BacklogPolicy(**(dict(plan["policy"]) | overrides))
    except (KeyError, TypeError) as exc:
        raise InputError(f"the plan has no usable 'policy': {exc!r}") from exc


def config_from_plan(plan: Mapping[str, Any], **values: Any) -> SimConfig:
    request = plan.get("request", {})
    return SimConfig(
        visibility_timeout_s=float(request.get("visibility_timeout_s", 300.0)),
        notice_s=float(request.get("notice_s", 120.0)),
        **values,
    )


def parse_arrivals(text: str) -> list[tuple[float, float]]:
    """A rate ("600" tasks/min) or a schedule file's text: lines `start_s,tasks_per_min`."""
    schedule = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(";", ",").split(",")
        try:
            start, rate = (
                (0.0, float(parts[0])) if len(parts) == 1 else (float(parts[0]), float(parts[1]))
            )
        except ValueError as exc:
            raise InputError(
                f"arrivals line {number}: expected `start_s,tasks_per_min` (or one rate), got {line!r}"
            ) from exc
        if rate < 0 or start < 0:
            raise InputError(f"arrivals line {number}: negative value in {line!r}")
        schedule.append((start, rate))
    if not schedule:
        raise InputError("arrivals: expected a rate or `start_s,tasks_per_min` lines, got nothing")
    return sorted(schedule)


def expected_fleet_tasks_per_min(pools: Sequence[SimPool]) -> float:
    return sum(p.max_nodes * p.tasks_per_min for p in pools)
