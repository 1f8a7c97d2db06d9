"""Capacity projection: how many workers of a measured mode fit a machine, and what they yield.

For one mode, a measurement gives the memory of one worker (PSS), the memory the node needs once
whatever the worker count (the model server, in `shared` mode), the wall seconds of one task and the
CPU seconds it costs the whole node (worker and server together). On a machine shape:

    workers by memory = floor((memory - reserve - node fixed) / worker memory)
    workers by cores  = floor(vCPU × wall s / CPU s)      (enough workers to keep every core busy)
    workers           = min(by memory, by cores); the smaller one names what bounds the node
    tasks/min         = min(workers × 60 / wall s,  vCPU × 60 / CPU s)
    tasks per dollar  = tasks/min × 60 / $ per hour

The production numbers this project is built after follow from it: 8.5 GB per isolated task on a
256 GB node gives 30 workers (memory-bound); 2.5 GB per task with a shared server gives 32 on 32
vCPU (core-bound).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from fleetinfer.bench.instances import InstanceShape
from fleetinfer.errors import InputError

MIB_PER_GIB = 1024.0


@dataclass(frozen=True, slots=True)
class ModeFootprint:
    """What one mode costs, measured: per worker, per node and per task."""

    mode: str
    worker_mib: float
    node_fixed_mib: float
    task_wall_s: float
    task_cpu_s: float

    def __post_init__(self) -> None:
        for name in ("worker_mib", "task_wall_s", "task_cpu_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"{self.mode}: {name} must be > 0, got {getattr(self, name)!r}")
        if self.node_fixed_mib < 0:
            raise InputError(
                f"{self.mode}: node_fixed_mib must be >= 0, got {self.node_fixed_mib!r}"
            )


@dataclass(frozen=True, slots=True)
class Projection:
    mode: str
    instance: str
    workers_by_memory: int
    workers_by_cores: int
    workers: int
    bound_by: str
    tasks_per_min: float
    tasks_per_usd: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def project(
    footprint: ModeFootprint, shape: InstanceShape, *, reserve_mib: float = 2048.0
) -> Projection:
    """Project one measured mode onto one machine shape (formulas in the module docstring)."""
    usable_mib = shape.memory_gib * MIB_PER_GIB - reserve_mib - footprint.node_fixed_mib
    by_memory = max(0, math.floor(usable_mib / footprint.worker_mib))
    by_cores = max(1, math.floor(shape.vcpu * footprint.task_wall_s / footprint.task_cpu_s))
    workers = min(by_memory, by_cores)
    tasks_per_min = min(
        workers * 60.0 / footprint.task_wall_s, shape.vcpu * 60.0 / footprint.task_cpu_s
    )
    return Projection(
        mode=footprint.mode,
        instance=shape.name,
        workers_by_memory=by_memory,
        workers_by_cores=by_cores,
        workers=workers,
        bound_by="memory" if by_memory < by_cores else "cores",
        tasks_per_min=tasks_per_min,
        tasks_per_usd=tasks_per_min * 60.0 / shape.usd_per_hour,
    )
