"""`fleetinfer plan --validate`: the profile's projection for this machine against a node run here.

The projection is the bench's formula (`fleetinfer.bench.projection.project`) on this machine's
shape (usable cores, total memory), from the profile's footprint of one mode; no speed factor is
applied (the profile was measured here). The formula sizes workers by cores as
floor(vCPU × wall / CPU), which on a 2-vCPU machine drops a worker the node does run (1.7 → 1),
so the comparison uses the same formula with the node's own worker count (`fleetinfer run` sizes
min(cores, memory)): min(W × 60 / wall, cores × 60 / CPU s); both are printed. On a shared machine
the node gets fewer cores than it has: the CPU seconds its processes got over its run say how many
(`cores_obtained`), and the projection at those cores is printed too. The measurement is `fleetinfer run` on the same task: the
payloads go to a fresh SQLite queue, one node drains it (`--exit-when-empty`), and its rate is
taken from the results store: tasks/min while every worker is busy (the bench's steady rate: with
finishes sorted and W workers, (n - 2W + 1) × 60 / (finish[n-W] - finish[W-1])), and over the
whole run.
"""

from __future__ import annotations

import math
import os
import resource
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetinfer.bench.instances import InstanceShape
from fleetinfer.bench.projection import ModeFootprint, Projection, project
from fleetinfer.bench.report import steady_tasks_per_min
from fleetinfer.errors import InputError
from fleetinfer.plan.profile import TaskProfile

CLIENT_FOR_MODE = {"isolated": "inprocess", "shared": "shared"}


@dataclass(frozen=True, slots=True)
class NodeRun:
    """What one `fleetinfer run` node did here."""

    tasks_per_min: float
    steady_tasks_per_min: float | None
    workers: int
    server: str  # the model server's layout it ran ("2 instance(s) x 1 thread(s)"; "" without)
    tasks: int
    duration_s: float
    cpu_s: float
    loadavg_1m: float


@dataclass(frozen=True, slots=True)
class Validation:
    projection: Projection  # the bench's formula on this machine's shape
    footprint: ModeFootprint
    run: NodeRun
    cores: int

    @property
    def node_sized_tasks_per_min(self) -> float:
        """The projection with the workers the node runs: min(W × 60 / wall, cores × 60 / CPU)."""
        f = self.footprint
        return min(self.run.workers * 60.0 / f.task_wall_s, self.cores * 60.0 / f.task_cpu_s)

    @property
    def measured_tasks_per_min(self) -> float:
        return self.run.steady_tasks_per_min or self.run.tasks_per_min

    @property
    def ratio(self) -> float:
        return self.measured_tasks_per_min / self.node_sized_tasks_per_min

    @property
    def cores_obtained(self) -> float:
        """CPU seconds the node's processes got ÷ its run: below `cores` on a busy machine."""
        return self.run.cpu_s / self.run.duration_s if self.run.duration_s else 0.0

    def to_json(self) -> dict[str, Any]:
        run, f = self.run, self.footprint
        at_obtained = min(
            run.workers * 60.0 / f.task_wall_s, self.cores_obtained * 60.0 / f.task_cpu_s
        )
        return {
            "projection": self.projection.to_json(),
            "projection_node_sized": {
                "workers": run.workers,
                "tasks_per_min": round(self.node_sized_tasks_per_min, 2),
            },
            "measured": {
                "tasks": run.tasks,
                "workers": run.workers,
                "server": run.server,
                "duration_s": round(run.duration_s, 2),
                "tasks_per_min": round(run.tasks_per_min, 2),
                "tasks_per_min_steady": None
                if run.steady_tasks_per_min is None
                else round(run.steady_tasks_per_min, 2),
                "cpu_s": round(run.cpu_s, 2),
                "cores_obtained": round(self.cores_obtained, 2),
                "loadavg_1m": round(run.loadavg_1m, 2),
            },
            "measured_over_projected": round(self.ratio, 3),
            "measured_over_bench_formula": round(
                self.measured_tasks_per_min / self.projection.tasks_per_min, 3
            ),
            "projection_at_cores_obtained": round(at_obtained, 2),
            "measured_over_projection_at_cores_obtained": round(
                self.measured_tasks_per_min / at_obtained, 3
            )
            if at_obtained
            else None,
        }


def this_machine() -> InstanceShape:
    from fleetinfer.node.sizing import usable_cores

    memory_gib = os_total_memory_bytes() / 2**30
    return InstanceShape("this-machine", max(1, math.floor(usable_cores())), memory_gib, 1.0)


def os_total_memory_bytes() -> int:
    for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise InputError("/proc/meminfo has no MemTotal line")


def projection_here(profile: TaskProfile, mode: str) -> Projection:
    return project(profile.mode(mode).footprint, this_machine())


def _cpu_s() -> float:
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure_node(
    target: str,
    payloads: Sequence[Any],
    *,
    mode: str,
    models: Path | None,
    workers: int | None,
    server_instances: int | None = None,
    server_threads: int | None = None,
) -> NodeRun:
    """Run one node on the payloads (in this process; its workers and server are children),
    with the model server laid out as given (the bench's layout: what the profile measured)."""
    from fleetinfer.node.agent import NodeConfig, run_node
    from fleetinfer.queue import open_broker
    from fleetinfer.results import open_store
    from fleetinfer.task import resolve_target, send_tasks

    if mode not in CLIENT_FOR_MODE:
        raise InputError(
            f"--validate runs a node: mode must be one of {sorted(CLIENT_FOR_MODE)}, got {mode!r}"
        )
    with tempfile.TemporaryDirectory(prefix="fleetinfer-validate-") as folder:
        queue_url, results_url = f"sqlite:///{folder}/q.db", f"sqlite:///{folder}/r.db"
        with open_broker(queue_url) as broker:
            send_tasks(broker, resolve_target(target).task_name(), list(payloads), batch_size=10)
        config = NodeConfig(target=target, queue_url=queue_url, results_url=results_url,
                            models=models, client_mode=CLIENT_FOR_MODE[mode], workers=workers,
                            exit_when_empty=True, metrics_port=None,
                            server_instance_count=server_instances,
                            server_intra_op_threads=server_threads)  # fmt: skip
        cpu_before = _cpu_s()
        report = run_node(config)  # SIGTERM / Ctrl-C drain it and stop its server
        cpu_s = _cpu_s() - cpu_before
        with open_store(results_url) as store:
            finished = [r.finished_at for r in store.iter_results()]
    if not finished:
        raise InputError(f"the node run finished no task: {report.outcomes}")
    count = report.plan.workers
    return NodeRun(
        tasks_per_min=len(finished) * 60.0 / report.duration_s,
        steady_tasks_per_min=steady_tasks_per_min(finished, count),
        workers=count,
        server=_server_layout(mode, server_instances, server_threads),
        tasks=len(finished),
        duration_s=report.duration_s,
        cpu_s=cpu_s,
        loadavg_1m=os.getloadavg()[0],
    )


def _server_layout(mode: str, instances: int | None, threads: int | None) -> str:
    if mode != "shared":
        return ""
    return (
        f"{instances or 'repository config'} instance(s) x "
        f"{threads or 'repository config'} thread(s)"
    )


def validate(
    profile: TaskProfile,
    *,
    mode: str,
    target: str,
    payloads: Sequence[Any],
    models: Path | None,
    workers: int | None = None,
) -> Validation:
    projection = projection_here(profile, mode)
    run = measure_node(
        target,
        payloads,
        mode=mode,
        models=models,
        workers=workers or profile.bench_workers,
        server_instances=profile.server_instances,
        server_threads=profile.server_threads,
    )
    return Validation(projection, profile.mode(mode).footprint, run, this_machine().vcpu)
