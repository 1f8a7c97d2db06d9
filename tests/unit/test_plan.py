"""The planner's pieces: catalog, profile, policy, planner, simulation, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetinfer.errors import ConfigError, InfeasiblePlanError, InputError
from fleetinfer.plan.catalog import load_catalog, parse_catalog
from fleetinfer.plan.planner import Allocation, Plan, PlanRequest, make_plan, plan_to_json, pool_for
from fleetinfer.plan.policy import BacklogPolicy, desired_nodes, hpa_behavior
from fleetinfer.plan.profile import (
    NodeProfile,
    TaskProfile,
    load_profile,
    node_profiles,
    profile_from_report,
)
from fleetinfer.plan.simulate import (
    SimConfig,
    parse_arrivals,
    policy_from_plan,
    pools_from_plan,
    simulate,
    split_nodes,
)
from fleetinfer.plan.speed import GRAVITON4, OLDER_X86, cpu_factor, host_speed

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ROOT / "examples/plan/cdnet-h.profile.json"


def _profile() -> TaskProfile:
    return load_profile(HEAVY)


def _seed_node(name: str, count_nodes: int = 0) -> NodeProfile:
    """A node whose throughput is the seed's CDNet samples/s scaled by the speed factors."""
    catalog = load_catalog()
    nodes = node_profiles(_profile(), [catalog.offer(name, "us-east-1")], "shared", types=(name,))
    return nodes[0]


def test_shipped_catalog_is_dated_sourced_and_covers_every_family() -> None:
    catalog = load_catalog()
    assert len(catalog.types) >= 30
    assert catalog.as_of
    assert catalog.sources
    families = {t.family for t in catalog.types.values()}
    assert families == {"modern-x86", "older-x86", "graviton", "gpu", "inferentia"}
    offer = catalog.offer("r8g.8xlarge", "us-east-1")
    assert offer.spot_usd_per_hour < offer.on_demand_usd_per_hour
    assert offer.band.interruptions_per_hour > 0


def test_a_region_the_catalog_lacks_is_a_config_error_naming_the_regions_it_has() -> None:
    with pytest.raises(ConfigError, match=r"no prices for region 'mars-1'.*us-east-1"):
        load_catalog().offers("mars-1")


def test_a_catalog_naming_an_unknown_band_is_refused() -> None:
    document = {
        "catalog": {"as_of": "2026-01"},
        "bands": {"<5%": {"monthly_interruption": 0.025, "on_demand_fallback": 0.0}},
        "types": {
            "x.large": {"vcpu": 2, "memory_gib": 4, "arch": "x86_64", "family": "older-x86",
                        "cpu": "c", "usd_per_hour": {"r": 1.0}, "interruption_band": {"r": "?"}}
        },
    }  # fmt: skip
    with pytest.raises(ConfigError, match="interruption band '\\?'"):
        parse_catalog(document, "test")


def test_speed_factors_follow_the_seeds_measurements() -> None:
    catalog = load_catalog()
    assert cpu_factor(catalog.types["r8g.8xlarge"]) == pytest.approx(19.4 / 13.5)
    assert cpu_factor(catalog.types["m5.8xlarge"]) == pytest.approx(6.64 / 13.5)
    assert cpu_factor(catalog.types["c7i.8xlarge"]) == 1.0
    avx2_only = "model name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma\n"
    assert host_speed(avx2_only).klass == "older-x86"
    assert host_speed("model name\t: Xeon\nflags\t\t: avx2 avx512f avx512_vnni\n").factor == 1.0


def test_profile_scales_node_throughput_by_the_speed_factors() -> None:
    graviton, older = _seed_node("r8g.8xlarge"), _seed_node("m5.8xlarge")
    assert graviton.tasks_per_min / older.tasks_per_min == pytest.approx(GRAVITON4 / OLDER_X86)


def test_a_profile_from_a_failed_bench_says_what_failed(tmp_path: Path) -> None:
    report = {"modes": {"shared": {"error": "round 1: no task succeeded: boom"}}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report))
    with pytest.raises(InputError, match=r"bench failed in every mode.*boom"):
        load_profile(path)
    with pytest.raises(InputError, match="not a `fleetinfer bench` report"):
        profile_from_report({"bench": {}}, "x")


def test_a_mode_the_profile_lacks_is_an_input_error() -> None:
    with pytest.raises(InputError, match="no usable 'gpu-magic' mode"):
        _profile().mode("gpu-magic")


def test_policy_targets_in_flight_per_node_within_floor_ceiling_and_rates() -> None:
    policy = BacklogPolicy(target_in_flight_per_node=10, floor_nodes=2, ceiling_nodes=100)
    assert desired_nodes(policy, queued=0, in_flight=0, nodes=2, elapsed_s=60) == 2
    assert desired_nodes(policy, queued=95, in_flight=0, nodes=10, elapsed_s=60) == 10
    assert desired_nodes(policy, queued=10_000, in_flight=0, nodes=10, elapsed_s=60) == 20
    assert desired_nodes(policy, queued=10_000, in_flight=0, nodes=90, elapsed_s=600) == 100
    assert desired_nodes(policy, queued=0, in_flight=0, nodes=50, elapsed_s=60) == 45
    assert hpa_behavior(policy)["scaleUp"]["policies"][0]["value"] == 100
    with pytest.raises(ConfigError):
        BacklogPolicy(target_in_flight_per_node=0)


def test_spot_pool_counts_interruption_losses_and_on_demand_fallback() -> None:
    node = _seed_node("c5.9xlarge")
    request = PlanRequest(backlog=1, deadline_s=3600)
    spot, on_demand = pool_for(node, "spot", request), pool_for(node, "on-demand", request)
    assert spot.tasks_per_min < on_demand.tasks_per_min
    assert node.offer.spot_usd_per_hour < spot.usd_per_hour < on_demand.usd_per_hour


def test_planner_meets_the_deadline_with_at_least_min_pools_none_above_the_share() -> None:
    catalog = load_catalog()
    nodes = node_profiles(_profile(), catalog.offers("us-east-1"), "shared")
    plan = make_plan(nodes, PlanRequest(backlog=300_000_000, deadline_s=6 * 3600, max_share=0.4))
    document = plan_to_json(plan)
    assert plan.completion_s <= 6 * 3600
    assert len(document["pools"]) >= 3
    assert all(p["share"] <= 0.4 + 0.02 for p in document["pools"])


def test_an_unmeetable_deadline_says_by_how_much_and_what_would_meet_it() -> None:
    nodes = node_profiles(_profile(), load_catalog().offers("us-east-1"), "shared")
    request = PlanRequest(backlog=2_000_000_000, deadline_s=6 * 3600, max_nodes=500)
    with pytest.raises(InfeasiblePlanError, match=r"h late\. What would meet it: --deadline"):
        make_plan(nodes, request)


def test_a_budget_too_small_says_what_the_cheapest_mix_costs() -> None:
    nodes = node_profiles(_profile(), load_catalog().offers("us-east-1"), "shared")
    with pytest.raises(InfeasiblePlanError, match=r"above --budget \$1\.00"):
        make_plan(nodes, PlanRequest(backlog=10_000_000, deadline_s=6 * 3600, budget_usd=1.0))


def _seed_fleet(second: str) -> dict[str, object]:
    """The seed's example: 5,000 nodes, 2,500 of them modern x86, the rest `second`."""
    request = PlanRequest(backlog=0, deadline_s=24 * 3600, min_pools=2, max_share=0.5)
    allocations = tuple(
        Allocation(pool_for(_seed_node(name), "spot", request), 2500)
        for name in ("c7i.8xlarge", second)
    )
    plan = Plan(
        request,
        allocations,
        BacklogPolicy(target_in_flight_per_node=1, floor_nodes=5000, ceiling_nodes=5000),
    )
    return plan_to_json(plan)


def test_seed_example_graviton_instead_of_older_x86_doubles_the_contested_half() -> None:
    results = {}
    for second in ("m5.8xlarge", "r8g.8xlarge"):
        document = _seed_fleet(second)
        config = SimConfig(hours=2.0, seed=7, backlog=1e12, step_s=30.0)
        results[second] = simulate(pools_from_plan(document), policy_from_plan(document), config)
    older, graviton = results["m5.8xlarge"], results["r8g.8xlarge"]
    half = {k: next(v for name, v in r.per_pool.items() if not name.startswith("c7i"))["tasks_done"]
            for k, r in results.items()}  # fmt: skip
    assert half["r8g.8xlarge"] / half["m5.8xlarge"] >= 2.0
    whole = graviton.tasks_done / older.tasks_done
    assert whole == pytest.approx((13.5 + 19.4) / (13.5 + 6.64), rel=0.03)
    assert graviton.interruptions + older.interruptions > 0


def test_planner_given_older_x86_and_graviton_picks_graviton() -> None:
    catalog = load_catalog()
    offers = catalog.offers("us-east-1")
    nodes = node_profiles(
        _profile(), offers, "shared", types=("c7i.8xlarge", "m5.8xlarge", "r8g.8xlarge")
    )
    request = PlanRequest(backlog=1_500_000_000, deadline_s=24 * 3600, min_pools=2, max_share=0.5,
                          pool_caps={"c7i.8xlarge": 2500})  # fmt: skip
    chosen = {a.pool.name for a in make_plan(nodes, request).allocations}
    assert "r8g.8xlarge" in chosen
    assert "m5.8xlarge" not in chosen


def test_simulation_is_deterministic_from_its_seed_and_redelivers_long_tasks() -> None:
    document = _seed_fleet("r8g.8xlarge")
    for pool in document["pools"]:  # type: ignore[attr-defined]
        pool["task_wall_s"] = 600.0
        pool["interruptions_per_hour"] = 0.05
    runs = [
        simulate(pools_from_plan(document), policy_from_plan(document),
                 SimConfig(hours=1.0, seed=seed, backlog=1e10, step_s=30.0)).to_json()
        for seed in (3, 3, 4)
    ]  # fmt: skip
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert runs[0]["interruptions_survived"] > 0
    assert runs[0]["tasks_redelivered"] > 0


def test_simulation_scales_a_fleet_up_for_a_backlog_and_back_down_when_it_is_done() -> None:
    document = _seed_fleet("r8g.8xlarge")
    document["policy"] = BacklogPolicy(target_in_flight_per_node=31, ceiling_nodes=5000).to_json()
    result = simulate(pools_from_plan(document), policy_from_plan(document),
                      SimConfig(hours=3.0, seed=1, backlog=50_000_000, step_s=10.0))  # fmt: skip
    assert result.tasks_done == pytest.approx(50_000_000, rel=1e-6)
    assert result.backlog_cleared_s is not None
    assert 0 < result.peak_nodes <= 5000
    assert result.latency_p95_s > result.latency_p50_s > 0


def test_nodes_split_over_pools_in_proportion_with_largest_remainders() -> None:
    assert split_nodes(1, [1, 1]) == [1, 0] or split_nodes(1, [1, 1]) == [0, 1]
    assert split_nodes(10, [30, 10]) == [8, 2]
    assert split_nodes(100, [3, 4]) == [3, 4]


def test_arrivals_are_a_rate_or_a_schedule_and_bad_lines_are_named() -> None:
    assert parse_arrivals("600") == [(0.0, 600.0)]
    assert parse_arrivals("# s,rate\n3600,10\n0,5\n") == [(0.0, 5.0), (3600.0, 10.0)]
    with pytest.raises(InputError, match="arrivals line 2"):
        parse_arrivals("0,5\nnoon,7")


def test_a_planned_fleet_clears_its_backlog_by_the_deadline_in_simulation() -> None:
    nodes = node_profiles(_profile(), load_catalog().offers("us-east-1"), "shared")
    plan = make_plan(nodes, PlanRequest(backlog=300_000_000, deadline_s=6 * 3600))
    document = plan_to_json(plan)
    result = simulate(pools_from_plan(document), policy_from_plan(document),
                      SimConfig(hours=8.0, seed=2, backlog=300_000_000))  # fmt: skip
    assert result.backlog_cleared_s is not None
    assert result.backlog_cleared_s <= 6 * 3600


def test_fewer_types_than_min_pools_is_refused_naming_the_types() -> None:
    nodes = node_profiles(_profile(), load_catalog().offers("us-east-1"), "shared",
                          types=("c7i.8xlarge", "r8g.8xlarge"))  # fmt: skip
    with pytest.raises(InfeasiblePlanError, match=r"--min-pools 3 .* 2 instance types"):
        make_plan(nodes, PlanRequest(backlog=1000, deadline_s=6 * 3600))


def test_a_deadline_shorter_than_start_up_says_no_fleet_meets_it() -> None:
    nodes = node_profiles(_profile(), load_catalog().offers("us-east-1"), "shared")
    with pytest.raises(InfeasiblePlanError, match=r"so no fleet meets it\. What would meet it"):
        make_plan(nodes, PlanRequest(backlog=1000, deadline_s=30))


def test_the_policy_holds_a_fleet_near_the_load_not_at_its_ceiling() -> None:
    document = _seed_fleet("r8g.8xlarge")
    document["policy"] = BacklogPolicy(target_in_flight_per_node=31, ceiling_nodes=5000).to_json()
    pools = pools_from_plan(document)
    fleet_rate = sum(p.max_nodes * p.tasks_per_min for p in pools)
    config = SimConfig(hours=6.0, seed=1, arrivals_per_min=((0.0, 0.1 * fleet_rate),))
    result = simulate(pools, policy_from_plan(document), config)
    held_usd = sum(p.max_nodes * p.spot_usd_per_hour for p in pools) * 6.0
    assert result.tasks_done == pytest.approx(result.tasks_arrived, rel=0.01)
    assert result.cost_usd < 0.15 * held_usd
