"""Fleet planning: which instance types, how many, spot or on demand, to finish a backlog by a
deadline at the lowest cost per task; and a simulation to check such a plan.

```
catalog.toml ─▶ catalog.Catalog ─▶ Offer (type × region, spot and on-demand $/h, band)
bench.json  ─▶ profile.TaskProfile ─▶ NodeProfile per offer (speed.py scales host → type)
NodeProfiles ─▶ planner.make_plan ─▶ Plan (pools, nodes, policy) ─▶ plan.json
plan.json   ─▶ simulate.simulate (FleetSimulation) ─▶ SimResult (tasks, p95, cost, interruptions, redeliveries)
policy.desired_nodes: the backlog-per-node autoscaling rule shared by planner, simulation and
the deployment renderers
```
"""

from fleetinfer.plan.catalog import Catalog, InstanceType, Offer, load_catalog
from fleetinfer.plan.planner import Plan, PlanRequest, make_plan, plan_to_json
from fleetinfer.plan.policy import BacklogPolicy, desired_nodes, hpa_behavior, scale_out_s
from fleetinfer.plan.profile import NodeProfile, TaskProfile, load_profile, node_profiles
from fleetinfer.plan.simulate import FleetSimulation, SimConfig, SimResult

__all__ = [
    "BacklogPolicy",
    "Catalog",
    "FleetSimulation",
    "InstanceType",
    "NodeProfile",
    "Offer",
    "Plan",
    "PlanRequest",
    "SimConfig",
    "SimResult",
    "TaskProfile",
    "desired_nodes",
    "hpa_behavior",
    "load_catalog",
    "load_profile",
    "make_plan",
    "node_profiles",
    "plan_to_json",
    "scale_out_s",
]
