"""The same fleet with the isolated-per-task profile and with the shared-server profile: tasks/$.

For each profile, the planner picks the fleet for the shared mode (`--backlog` tasks in
`--deadline-h` hours, CPU families, us-east-1); the same pools and node counts are then given the
isolated-per-task mode's per-node figures. Both fleets are simulated on the same backlog for
`--hours` (the policy scales each within its node counts), and the table compares the tasks/$ the
profiles imply (fleet tasks/min ÷ fleet $/h, expected interruptions counted) with the simulation's.
Prints one JSON document.

    .venv/bin/python benchmarks/plan_modes.py [--profile NAME=PATH ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fleetinfer.plan.catalog import load_catalog
from fleetinfer.plan.planner import Allocation, Plan, PlanRequest, make_plan, plan_to_json, pool_for
from fleetinfer.plan.profile import TaskProfile, load_profile, node_profile, node_profiles
from fleetinfer.plan.simulate import SimConfig, policy_from_plan, pools_from_plan, simulate

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {
    "production (seed's figures)": ROOT / "examples/plan/production.profile.json",
    "roadchange cdnet-h (README bench)": ROOT / "examples/plan/cdnet-h.profile.json",
}


def same_fleet(plan: Plan, profile: TaskProfile, mode: str) -> Plan:
    """`plan`'s pools and node counts, with `mode`'s per-node figures."""
    allocations = []
    for allocation in plan.allocations:
        node = node_profile(profile, allocation.pool.node.offer, mode)
        pool = pool_for(node, allocation.pool.purchase, plan.request)
        allocations.append(Allocation(pool, allocation.nodes))
    workers = sum(a.nodes * a.pool.node.workers for a in allocations) / plan.nodes
    policy = plan.policy.__class__(
        target_in_flight_per_node=workers, floor_nodes=0, ceiling_nodes=plan.nodes
    )
    return Plan(plan.request, tuple(allocations), policy)


def row(name: str, path: Path, backlog: int, deadline_h: float, hours: float) -> dict[str, Any]:
    profile = load_profile(path)
    catalog = load_catalog()
    nodes = node_profiles(profile, catalog.offers("us-east-1"), "shared")
    request = PlanRequest(backlog=backlog, deadline_s=deadline_h * 3600)
    shared = make_plan(nodes, request)
    fleets = {
        "shared": shared,
        "isolated-per-task": same_fleet(shared, profile, "isolated-per-task"),
    }
    out: dict[str, Any] = {"profile": name, "source": str(path.relative_to(ROOT)),
                           "fleet": {a.pool.name: a.nodes for a in shared.allocations}}  # fmt: skip
    for mode, plan in fleets.items():
        document = plan_to_json(plan)
        config = SimConfig(hours=hours, seed=1, backlog=float(backlog), step_s=10.0)
        result = simulate(pools_from_plan(document), policy_from_plan(document), config)
        out[mode] = {
            "implied_tasks_per_usd": plan.tasks_per_min * 60 / plan.usd_per_hour,
            "simulated_tasks_per_usd": result.tasks_per_usd,
            "tasks_done": round(result.tasks_done),
            "cost_usd": round(result.cost_usd, 2),
            "backlog_cleared_h": result.to_json()["backlog_cleared_h"],
            "interruptions": result.interruptions,
        }
    for key in ("implied_tasks_per_usd", "simulated_tasks_per_usd"):
        out[f"{key}_shared_over_isolated_per_task"] = round(
            out["shared"][key] / out["isolated-per-task"][key], 3
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="append", default=[], help="NAME=PATH (bench.json)")
    parser.add_argument("--backlog", type=int, default=None)
    parser.add_argument("--deadline-h", type=float, default=6.0)
    parser.add_argument("--hours", type=float, default=24.0)
    args = parser.parse_args()
    profiles = dict(PROFILES) | {
        k: Path(v).resolve() for k, v in (p.split("=", 1) for p in args.profile)
    }
    backlogs = {"production (seed's figures)": 1_000_000}
    rows = [row(name, path, args.backlog or backlogs.get(name, 500_000_000), args.deadline_h, args.hours)
            for name, path in profiles.items()]  # fmt: skip
    print(json.dumps({"benchmark": "plan_modes", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
