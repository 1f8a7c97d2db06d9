"""A task profile: one `fleetinfer bench --json` run, carried onto every instance type.

From each serving mode of the bench: one worker's PSS, the node's fixed PSS (model server,
zygote), the task's uncontended wall seconds and its CPU seconds (the bench's projection
footprint), and the node's start-up to its first finished task (model load included). On an
instance type the CPU and wall seconds are scaled by host factor ÷ type factor
(`fleetinfer.plan.speed`), then projected with `fleetinfer.bench.projection.project`: workers by
memory and by cores, tasks/min per node, tasks/$. On a type with accelerators the model part of a
task (`model_share` of its CPU seconds) runs on them, and the node is bounded by the slower of its
vCPUs (the rest of the task) and its accelerators.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetinfer.bench.projection import ModeFootprint, Projection, project
from fleetinfer.errors import InputError
from fleetinfer.plan.catalog import Offer
from fleetinfer.plan.speed import (
    MODERN_X86,
    OLDER_X86,
    HostSpeed,
    accelerator_vcpu_equivalents,
    cpu_factor,
    host_speed,
)

DEFAULT_LAUNCH_S = 90.0  # instance boot + image pull before the node agent starts (assumption)
DEFAULT_MODEL_SHARE = 0.8  # share of a task's CPU seconds spent in the model, for accelerators
HOST_CLASSES = {"modern-x86": MODERN_X86, "older-x86": OLDER_X86}


@dataclass(frozen=True, slots=True)
class ModeMeasure:
    """What the bench measured for one serving mode."""

    footprint: ModeFootprint
    first_task_s: float
    tasks_per_min_measured: float


@dataclass(frozen=True, slots=True)
class TaskProfile:
    target: str
    source: str
    host: HostSpeed
    modes: Mapping[str, ModeMeasure]
    model_calls_per_task: float
    model_share: float = DEFAULT_MODEL_SHARE
    launch_s: float = DEFAULT_LAUNCH_S
    bench_workers: int | None = None
    server_instances: int | None = None  # the shared mode's server layout, as benched
    server_threads: int | None = None

    def mode(self, name: str) -> ModeMeasure:
        if name not in self.modes:
            raise InputError(
                f"{self.source}: the profile has no usable {name!r} mode; it has "
                f"{sorted(self.modes)}: pick one with --mode, or bench that mode"
            )
        return self.modes[name]


@dataclass(frozen=True, slots=True)
class NodeProfile:
    """The task on one instance type in one serving mode: one node's numbers."""

    offer: Offer
    mode: str
    workers: int
    bound_by: str
    tasks_per_min: float
    task_wall_s: float
    startup_s: float
    speed: float

    @property
    def tasks_per_usd_on_demand(self) -> float:
        return self.tasks_per_min * 60.0 / self.offer.on_demand_usd_per_hour

    @property
    def tasks_per_usd_spot(self) -> float:
        return self.tasks_per_min * 60.0 / self.offer.spot_usd_per_hour

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.offer.name,
            "family": self.offer.instance.family,
            "region": self.offer.region,
            "mode": self.mode,
            "workers": self.workers,
            "bound_by": self.bound_by,
            "speed": round(self.speed, 3),
            "tasks_per_min": round(self.tasks_per_min, 2),
            "task_wall_s": round(self.task_wall_s, 3),
            "startup_s": round(self.startup_s, 1),
            "on_demand_usd_per_hour": self.offer.on_demand_usd_per_hour,
            "spot_usd_per_hour": round(self.offer.spot_usd_per_hour, 5),
            "tasks_per_usd_on_demand": round(self.tasks_per_usd_on_demand, 1),
            "tasks_per_usd_spot": round(self.tasks_per_usd_spot, 1),
            "interruption_band": self.offer.band.name,
        }


def load_profile(path: Path, *, host_class: str | None = None) -> TaskProfile:
    """Read a `fleetinfer bench --json` report (or bench.json) as a task profile."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{path}: expected the JSON of `fleetinfer bench --json` (or its bench.json): {exc}"
        ) from exc
    if not isinstance(report, dict):
        raise InputError(
            f"{path}: expected a JSON object from `fleetinfer bench`, got {report!r:.80}"
        )
    return profile_from_report(report, str(path), host_class=host_class)


def profile_from_report(
    report: Mapping[str, Any], source: str, *, host_class: str | None = None
) -> TaskProfile:
    modes_in = report.get("modes")
    if not isinstance(modes_in, dict) or not modes_in:
        raise InputError(f"{source}: not a `fleetinfer bench` report: it has no 'modes'")
    modes: dict[str, ModeMeasure] = {}
    failures: list[str] = []
    for name, summary in modes_in.items():
        measure, why = _mode_measure(name, summary)
        if measure is None:
            failures.append(f"{name}: {why}".replace("[", "(").replace("]", ")"))
        else:
            modes[name] = measure
    if not modes:
        raise InputError(
            f"{source}: the bench failed in every mode, so it profiles nothing ("
            + "; ".join(failures)
            + "): fix the task or the bench and run `fleetinfer bench --json` again"
        )
    limit = report.get("limit", {})
    return TaskProfile(
        target=str(report.get("bench", {}).get("target", "?")),
        source=source,
        host=_host(report, host_class),
        modes=modes,
        model_calls_per_task=float(limit.get("model_calls_per_task") or 0.0),
        bench_workers=report.get("bench", {}).get("workers"),
        server_instances=_positive_int(report.get("bench", {}).get("server_instances")),
        server_threads=_positive_int(report.get("bench", {}).get("server_threads")),
    )


def _positive_int(value: Any) -> int | None:
    """A count the report holds, or None (an older report, or a mangled one)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _mode_measure(name: str, summary: Any) -> tuple[ModeMeasure | None, str]:
    if not isinstance(summary, dict):
        return None, "not a mode summary"
    if "error" in summary:
        return None, str(summary["error"])
    footprint = summary.get("projection", {}).get("footprint")
    if not footprint:
        return None, str(summary.get("projection", {}).get("error", "no projection footprint"))
    measure = ModeMeasure(
        footprint=ModeFootprint(mode=name, **{k: float(v) for k, v in footprint.items()}),
        first_task_s=float(summary.get("first_task_s") or 0.0),
        tasks_per_min_measured=float(
            summary.get("tasks_per_min_steady") or summary.get("tasks_per_min") or 0.0
        ),
    )
    return measure, ""


def _host(report: Mapping[str, Any], host_class: str | None) -> HostSpeed:
    klass = host_class or report.get("host_class")
    cpu = str(report.get("machine", {}).get("cpu", "unknown CPU"))
    if klass is None:
        return host_speed()
    if klass not in HOST_CLASSES:
        raise InputError(f"host class {klass!r}: expected one of {sorted(HOST_CLASSES)}")
    return HostSpeed(cpu, str(klass), HOST_CLASSES[str(klass)], "given with the profile")


def node_profile(profile: TaskProfile, offer: Offer, mode: str) -> NodeProfile:
    """The task in `mode` on one node of `offer` (method in the module docstring)."""
    measure = profile.mode(mode)
    base = measure.footprint
    speed = cpu_factor(offer.instance)
    scale = profile.host.factor / speed
    accel = accelerator_vcpu_equivalents(offer.instance)
    cpu_part = (1.0 - profile.model_share) if accel else 1.0
    footprint = ModeFootprint(
        mode=mode,
        worker_mib=base.worker_mib,
        node_fixed_mib=base.node_fixed_mib,
        task_wall_s=base.task_wall_s * scale * cpu_part,
        task_cpu_s=base.task_cpu_s * scale * cpu_part,
    )
    projection: Projection = project(footprint, offer.shape())
    tasks_per_min = projection.tasks_per_min
    if accel:
        model_cpu_s = base.task_cpu_s * profile.host.factor * profile.model_share
        tasks_per_min = min(tasks_per_min, accel * 60.0 / model_cpu_s)
    return NodeProfile(
        offer=offer,
        mode=mode,
        workers=projection.workers,
        bound_by=projection.bound_by,
        tasks_per_min=tasks_per_min,
        task_wall_s=base.task_wall_s * scale,
        startup_s=profile.launch_s + measure.first_task_s * scale,
        speed=speed,
    )


CPU_FAMILIES = ("modern-x86", "older-x86", "graviton")


def node_profiles(
    profile: TaskProfile,
    offers: Sequence[Offer],
    mode: str,
    *,
    families: Collection[str] = CPU_FAMILIES,
    types: Collection[str] = (),
) -> list[NodeProfile]:
    """The node profile of every offer of `families` (or named in `types`) that runs a worker.
    Accelerator families run only when asked: the model must be compiled for them."""
    chosen = [o for o in offers if (o.name in types if types else o.instance.family in families)]
    nodes = [node_profile(profile, offer, mode) for offer in chosen]
    return [n for n in nodes if n.workers > 0 and n.tasks_per_min > 0]
