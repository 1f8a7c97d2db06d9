"""How long `fleetinfer simulate` takes for 5,000 nodes over 24 hours (target: under 60 s).

The fleet is the seed's example (2,500 modern x86 c7i.8xlarge, 2,500 Graviton r8g.8xlarge, spot,
the catalog's interruption bands) with the `cdnet-h` profile's shared mode, held at 5,000 nodes
(policy floor = ceiling) under a backlog it cannot finish; a second run multiplies every
interruption rate by 50 to stress the per-node events (notices, drains, replacements), and a
third makes each task 600 s long, so that every interruption loses in-flight work to redelivery;
a fourth lets the policy scale the fleet between 0 and 5,000 nodes under a daily arrival curve
whose peak needs all of them.
Prints one JSON document.

    .venv/bin/python benchmarks/simulate_bench.py [--hours 24] [--step-s 10] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from fleetinfer.plan.catalog import load_catalog
from fleetinfer.plan.planner import Allocation, Plan, PlanRequest, plan_to_json, pool_for
from fleetinfer.plan.policy import BacklogPolicy
from fleetinfer.plan.profile import load_profile, node_profiles
from fleetinfer.plan.simulate import SimConfig, policy_from_plan, pools_from_plan, simulate

ROOT = Path(__file__).resolve().parents[1]
NODES = 5000


def seed_fleet() -> dict[str, Any]:
    profile = load_profile(ROOT / "examples/plan/cdnet-h.profile.json")
    catalog = load_catalog()
    names = ("c7i.8xlarge", "r8g.8xlarge")
    offers = [catalog.offer(n, "us-east-1") for n in names]
    request = PlanRequest(backlog=0, deadline_s=86400, min_pools=2, max_share=0.5)
    nodes = node_profiles(profile, offers, "shared", types=names)
    allocations = tuple(Allocation(pool_for(n, "spot", request), NODES // 2) for n in nodes)
    policy = BacklogPolicy(target_in_flight_per_node=31, floor_nodes=NODES, ceiling_nodes=NODES)
    return plan_to_json(Plan(request, allocations, policy))


def timed_run(
    document: dict[str, Any], hours: float, step_s: float, seed: int, **values: Any
) -> dict[str, Any]:
    config = SimConfig(hours=hours, seed=seed, step_s=step_s, **({"backlog": 1e13} | values))
    began = time.perf_counter()
    result = simulate(pools_from_plan(document), policy_from_plan(document), config)
    elapsed = time.perf_counter() - began
    return {"elapsed_s": round(elapsed, 2), "under_60_s": elapsed < 60.0} | result.to_json()


# arrivals per hour of the day, tasks/min: night, ramp, a peak that needs the whole fleet
FLEET_TASKS_PER_MIN = 19_000_000.0  # about 0.9 of the 5,000 nodes
DAY = tuple((hour * 3600.0, FLEET_TASKS_PER_MIN * share) for hour, share in enumerate(
    (0.02, 0.02, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0, 1.0,
     0.95, 0.9, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.2, 0.1, 0.05, 0.02)))  # fmt: skip


def scaling(document: dict[str, Any]) -> dict[str, Any]:
    """The fleet with the policy free to scale it between 0 and 5,000 nodes."""
    scaled = json.loads(json.dumps(document))
    scaled["policy"]["floor_nodes"] = 0
    return scaled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--step-s", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    document = seed_fleet()
    stressed = json.loads(json.dumps(document))
    for pool in stressed["pools"]:
        pool["interruptions_per_hour"] *= 50
    long_tasks = json.loads(json.dumps(stressed))
    for pool in long_tasks["pools"]:
        pool["task_wall_s"] = 600.0
    print(json.dumps({
        "benchmark": "simulate_bench",
        "nodes": NODES,
        "hours": args.hours,
        "step_s": args.step_s,
        "host": {"cpu": _cpu(), "cores": os.cpu_count(), "loadavg_1m": os.getloadavg()[0],
                 "python": platform.python_version()},
        "catalog_bands": timed_run(document, args.hours, args.step_s, args.seed),
        "interruptions_x50": timed_run(stressed, args.hours, args.step_s, args.seed),
        "interruptions_x50_tasks_of_600_s": timed_run(long_tasks, args.hours, args.step_s, args.seed),
        "daily_curve_0_to_5000_nodes": timed_run(
            scaling(stressed), args.hours, args.step_s, args.seed, backlog=0.0, arrivals_per_min=DAY
        ),
    }, indent=2))  # fmt: skip


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
