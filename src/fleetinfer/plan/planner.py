"""The planner: the cheapest diversified instance mix that finishes a backlog by a deadline.

Each instance type is a pool, bought as spot or on demand, whichever costs less per task. A spot
pool's node loses capacity to each interruption (rate λ from its band): after the 2-minute notice
it drains (in-flight tasks shorter than the notice finish; longer ones are lost and redelivered
after the visibility timeout) and its replacement, launched at the notice, runs after the node's
start-up (launch and model load). A share of the pool's node-hours (the band's
`on_demand_fallback`) is served by on-demand capacity at the on-demand price:

    lost node-s per interruption = max(0, start-up - min(wall, notice) / 2) + max(0, wall - notice) / 2
    tasks/min per node (expected) = tasks/min × (1 - λ × lost node-s / 3600)
    $/h per node (expected)       = spot $/h × (1 - fallback) + on-demand $/h × fallback
    $/task                        = $/h ÷ (60 × tasks/min)

Pools are taken cheapest $/task first, each up to `max_share` of the fleet's throughput (and at most
1 / `min_pools`, so at least `min_pools` pools carry the load), within its node cap and the fleet's
`max_nodes`, until the fleet's rate finishes the backlog by the deadline:

    completion = slowest start-up + the policy's scale-out from 0 to the fleet (`scale_out_s`)
                 + backlog ÷ fleet tasks/min + tail (the longest task, plus the visibility
                 timeout when an interruption is likely within it)
    cost       = Σ nodes × $/h × completion
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fleetinfer.errors import InfeasiblePlanError
from fleetinfer.plan.policy import BacklogPolicy, policy_for, scale_out_s
from fleetinfer.plan.profile import NodeProfile

NOTICE_S = 120.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanRequest:
    backlog: int
    deadline_s: float
    budget_usd: float | None = None
    min_pools: int = 3
    max_share: float = 0.4
    max_nodes: int = 5000
    pool_caps: Mapping[str, int] | None = None
    default_pool_cap: int = 5000
    spot: bool = True
    visibility_timeout_s: float = 300.0
    notice_s: float = NOTICE_S

    @property
    def share_cap(self) -> float:
        return min(self.max_share, 1.0 / max(1, self.min_pools))

    def cap(self, name: str) -> int:
        return (self.pool_caps or {}).get(name, self.default_pool_cap)


@dataclass(frozen=True, slots=True)
class Pool:
    """One instance type, bought one way, with its expected per-node figures."""

    node: NodeProfile
    purchase: str  # "spot" | "on-demand"
    interruptions_per_hour: float
    on_demand_fallback: float
    tasks_per_min: float  # expected, interruptions counted
    usd_per_hour: float  # expected, fallback counted
    redelivered_per_interruption: float

    @property
    def name(self) -> str:
        return self.node.offer.name

    @property
    def usd_per_task(self) -> float:
        return self.usd_per_hour / (60.0 * self.tasks_per_min)


@dataclass(frozen=True, slots=True)
class Allocation:
    pool: Pool
    nodes: int


@dataclass(frozen=True, slots=True)
class Plan:
    request: PlanRequest
    allocations: tuple[Allocation, ...]
    policy: BacklogPolicy

    @property
    def nodes(self) -> int:
        return sum(a.nodes for a in self.allocations)

    @property
    def tasks_per_min(self) -> float:
        return sum(a.nodes * a.pool.tasks_per_min for a in self.allocations)

    @property
    def usd_per_hour(self) -> float:
        return sum(a.nodes * a.pool.usd_per_hour for a in self.allocations)

    @property
    def completion_s(self) -> float:
        return completion_s(self.request, self.allocations)

    @property
    def cost_usd(self) -> float:
        return self.usd_per_hour * self.completion_s / 3600.0

    @property
    def expected_interruptions(self) -> float:
        hours = self.completion_s / 3600.0
        return sum(a.nodes * a.pool.interruptions_per_hour * hours for a in self.allocations)


def pool_for(node: NodeProfile, purchase: str, request: PlanRequest) -> Pool:
    """The expected per-node figures of `node` bought as `purchase` (formulas in the docstring)."""
    offer = node.offer
    if purchase == "on-demand":
        return Pool(node, purchase, 0.0, 0.0, node.tasks_per_min, offer.on_demand_usd_per_hour, 0.0)
    rate = offer.band.interruptions_per_hour
    wall, notice = node.task_wall_s, request.notice_s
    lost_s = max(0.0, node.startup_s - min(wall, notice) / 2) + max(0.0, wall - notice) / 2
    available = max(0.0, 1.0 - rate * lost_s / 3600.0)
    fallback = offer.band.on_demand_fallback
    usd = offer.spot_usd_per_hour * (1 - fallback) + offer.on_demand_usd_per_hour * fallback
    redelivered = node.workers * max(0.0, wall - notice) / wall
    return Pool(node, purchase, rate, fallback, node.tasks_per_min * available, usd, redelivered)


def candidate_pools(nodes: Sequence[NodeProfile], request: PlanRequest) -> list[Pool]:
    """One pool per type (spot or on demand, the cheaper per task), cheapest per task first."""
    pools = []
    for node in nodes:
        options = [pool_for(node, "on-demand", request)]
        if request.spot:
            options.append(pool_for(node, "spot", request))
        pools.append(min(options, key=lambda p: p.usd_per_task))
    return sorted(pools, key=lambda p: (p.usd_per_task, p.name))


def completion_s(request: PlanRequest, allocations: Sequence[Allocation]) -> float:
    used = [a for a in allocations if a.nodes > 0]
    rate = sum(a.nodes * a.pool.tasks_per_min for a in used)
    if rate <= 0:
        return math.inf
    startup = max(a.pool.node.startup_s for a in used)
    ramp = scale_out_s(
        policy_for(1, floor_nodes=0, ceiling_nodes=sum(a.nodes for a in used)), 10**9
    )
    return startup + ramp + request.backlog * 60.0 / rate + _tail_s(request, used)


def _tail_s(request: PlanRequest, used: Sequence[Allocation]) -> float:
    wall = max(a.pool.node.task_wall_s for a in used)
    per_s = sum(a.nodes * a.pool.interruptions_per_hour for a in used) / 3600.0
    likely = 1.0 - math.exp(-per_s * request.visibility_timeout_s)
    return wall + likely * request.visibility_timeout_s


def allocate(pools: Sequence[Pool], request: PlanRequest, rate_needed: float) -> list[Allocation]:
    """Cheapest pools first, each up to the share cap, its node cap and the fleet's max_nodes."""
    allocations: list[Allocation] = []
    left, nodes_left = rate_needed, request.max_nodes
    for pool in pools:
        if nodes_left <= 0 or (left <= 1e-9 and len(allocations) >= request.min_pools):
            break
        rate = max(min(left, request.share_cap * rate_needed), 1e-9)
        count = min(math.ceil(rate / pool.tasks_per_min - 1e-9), request.cap(pool.name), nodes_left)
        if count > 0:
            allocations.append(Allocation(pool, count))
            left -= count * pool.tasks_per_min
            nodes_left -= count
    return allocations


def fastest(pools: Sequence[Pool], request: PlanRequest) -> list[Allocation]:
    """The most throughput `max_nodes` can give under the caps: fastest nodes first."""
    by_speed = sorted(pools, key=lambda p: -p.tasks_per_min)
    total = sum(min(request.cap(p.name), request.max_nodes) * p.tasks_per_min for p in by_speed)
    return allocate(by_speed, request, total)


def make_plan(nodes: Sequence[NodeProfile], request: PlanRequest) -> Plan:
    """The cheapest diversified mix that meets the deadline (and budget), or InfeasiblePlanError."""
    pools = candidate_pools(nodes, request)
    if not pools:
        raise InfeasiblePlanError("no instance type in the catalog can run one worker of this task")
    if len(pools) < request.min_pools:
        raise InfeasiblePlanError(
            f"--min-pools {request.min_pools} asks for more pools than the {len(pools)} instance "
            f"types that can run the task ({', '.join(p.name for p in pools)}): lower --min-pools "
            "or allow more types (--types, --families)"
        )
    startup = max(p.node.startup_s for p in pools)
    plan: Plan | None = None
    window_s = request.deadline_s - startup - max(p.node.task_wall_s for p in pools)
    if window_s > 0:
        plan = _fit(pools, request, request.backlog * 60.0 / window_s)
    if plan is None or plan.completion_s > request.deadline_s:
        raise _deadline_error(pools, request)
    if request.budget_usd is not None and plan.cost_usd > request.budget_usd:
        raise _budget_error(plan, request.budget_usd)
    return plan


def _fit(pools: Sequence[Pool], request: PlanRequest, rate: float) -> Plan | None:
    """Grow the rate asked of the mix until its completion (start-up and tail included) fits."""
    for _ in range(120):
        allocations = allocate(pools, request, rate)
        got = sum(a.nodes * a.pool.tasks_per_min for a in allocations)
        if got < rate * (1 - 1e-6):
            return None
        plan = _plan(request, allocations)
        if plan.completion_s <= request.deadline_s:
            return plan
        rate *= 1.02
    return None


def _plan(request: PlanRequest, allocations: Sequence[Allocation]) -> Plan:
    nodes = sum(a.nodes for a in allocations)
    workers = sum(a.nodes * a.pool.node.workers for a in allocations) / max(1, nodes)
    policy = policy_for(workers, floor_nodes=0, ceiling_nodes=nodes)
    return Plan(request, tuple(allocations), policy)


def _deadline_error(pools: Sequence[Pool], request: PlanRequest) -> InfeasiblePlanError:
    best = _plan(request, fastest(pools, request))
    done_s, fixed_s = best.completion_s, _fixed_s(best)
    said = (
        f"the deadline of {request.deadline_s / 3600:.2f} h cannot be met: the fastest mix within "
        f"--max-nodes {request.max_nodes} and the pool caps ({best.nodes:,} nodes, "
        f"{best.tasks_per_min:,.0f} tasks/min) finishes {request.backlog:,} tasks in "
        f"{done_s / 3600:.2f} h, {(done_s - request.deadline_s) / 3600:.2f} h late"
    )
    later = f"--deadline {math.ceil(done_s / 360) / 10:.1f}h"
    if request.deadline_s <= fixed_s:
        return InfeasiblePlanError(
            f"{said}; start-up, scale-out and the longest task alone take {fixed_s / 3600:.2f} h, "
            f"so no fleet meets it. What would meet it: {later}"
        )
    rate_needed = request.backlog * 60.0 / (request.deadline_s - fixed_s)
    nodes_needed = math.ceil(best.nodes * rate_needed / best.tasks_per_min)
    fits = int((request.deadline_s - fixed_s) * best.tasks_per_min / 60.0)
    return InfeasiblePlanError(
        f"{said}. What would meet it: {later}, or about {nodes_needed:,} nodes (--max-nodes, "
        f"--pool-cap), or a backlog of at most {fits:,} tasks"
    )


def _fixed_s(plan: Plan) -> float:
    """The part of the completion that more nodes do not shorten: start-up, scale-out, tail."""
    if plan.tasks_per_min <= 0:
        return 0.0
    return plan.completion_s - plan.request.backlog * 60.0 / plan.tasks_per_min


def _budget_error(plan: Plan, budget_usd: float) -> InfeasiblePlanError:
    fits = int(plan.request.backlog * budget_usd / plan.cost_usd)
    return InfeasiblePlanError(
        f"the cheapest mix that meets the deadline costs ${plan.cost_usd:,.2f}, "
        f"${plan.cost_usd - budget_usd:,.2f} above --budget ${budget_usd:,.2f}: raise --budget to "
        f"${math.ceil(plan.cost_usd):,}, or plan a backlog of at most {fits:,} tasks, or allow "
        "more pools (--max-share, --min-pools) or spot"
    )


def single_type_plans(nodes: Sequence[NodeProfile], request: PlanRequest) -> list[Plan]:
    """Each type alone (no diversification), for comparison; those that cannot meet the deadline
    are left out."""
    alone = replace(request, min_pools=1, max_share=1.0, budget_usd=None)
    plans = []
    for node in nodes:
        try:
            plans.append(make_plan([node], alone))
        except InfeasiblePlanError:
            continue
    return sorted(plans, key=lambda p: p.cost_usd)


def scaled(plan: Plan, factor: float) -> Plan:
    """The same mix with every pool's node count scaled by `factor` (for cost vs time curves)."""
    allocations = tuple(
        Allocation(a.pool, max(1, round(a.nodes * factor))) for a in plan.allocations
    )
    return Plan(plan.request, allocations, plan.policy)


def plan_to_json(plan: Plan, **extra: Any) -> dict[str, Any]:
    """Everything `fleetinfer simulate --plan` needs, self-contained."""
    request = plan.request
    return {
        "request": {
            "backlog": request.backlog,
            "deadline_s": request.deadline_s,
            "budget_usd": request.budget_usd,
            "min_pools": request.min_pools,
            "max_share": request.max_share,
            "max_nodes": request.max_nodes,
            "spot": request.spot,
            "visibility_timeout_s": request.visibility_timeout_s,
            "notice_s": request.notice_s,
        },
        "fleet": {
            "nodes": plan.nodes,
            "tasks_per_min": round(plan.tasks_per_min, 1),
            "usd_per_hour": round(plan.usd_per_hour, 2),
            "completion_h": round(plan.completion_s / 3600.0, 3),
            "cost_usd": round(plan.cost_usd, 2),
            "tasks_per_usd": round(request.backlog / plan.cost_usd, 1) if plan.cost_usd else None,
            "expected_interruptions": round(plan.expected_interruptions, 1),
        },
        "pools": [_allocation_json(a, plan) for a in plan.allocations],
        "policy": plan.policy.to_json(),
        **extra,
    }


def _allocation_json(allocation: Allocation, plan: Plan) -> dict[str, Any]:
    pool, node = allocation.pool, allocation.pool.node
    return {
        **node.to_json(),
        "purchase": pool.purchase,
        "nodes": allocation.nodes,
        "share": round(allocation.nodes * pool.tasks_per_min / plan.tasks_per_min, 3),
        "interruptions_per_hour": pool.interruptions_per_hour,
        "on_demand_fallback": pool.on_demand_fallback,
        "expected_tasks_per_min": round(pool.tasks_per_min, 2),
        "expected_usd_per_hour": round(pool.usd_per_hour, 5),
        "usd_per_task": pool.usd_per_task,
        "redelivered_per_interruption": round(pool.redelivered_per_interruption, 2),
    }
