"""`fleetinfer plan --validate`: the profile's projection for this machine against a node run here.

The projection is the bench's formula (`fleetinfer.bench.projection.project`) on this machine's
shape (usable cores, total memory), from the profile's footprint of one mode; no speed factor is
applied (the profile was measured here). The measurement is `fleetinfer run` on the same task: the
payloads go to a fresh SQLite queue, one node drains it (`--exit-when-empty`), and its rate is
taken from the results store: tasks/min while every worker is busy (the bench's steady rate: with
finishes sorted and W workers, (n - 2W + 1) × 60 / (finish[n-W] - finish[W-1])), and over the
whole run.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetinfer.bench.instances import InstanceShape
from fleetinfer.bench.projection import Projection, project
from fleetinfer.bench.report import steady_tasks_per_min
from fleetinfer.errors import InputError
from fleetinfer.plan.profile import TaskProfile

CLIENT_FOR_MODE = {"isolated": "inprocess", "shared": "shared"}


@dataclass(frozen=True, slots=True)
class Validation:
    projection: Projection
    measured_tasks_per_min: float
    measured_steady_tasks_per_min: float | None
    workers: int
    tasks: int
    duration_s: float

    @property
    def ratio(self) -> float:
        measured = self.measured_steady_tasks_per_min or self.measured_tasks_per_min
        return measured / self.projection.tasks_per_min

    def to_json(self) -> dict[str, Any]:
        return {
            "projection": self.projection.to_json(),
            "measured": {
                "tasks": self.tasks,
                "workers": self.workers,
                "duration_s": round(self.duration_s, 2),
                "tasks_per_min": round(self.measured_tasks_per_min, 2),
                "tasks_per_min_steady": None
                if self.measured_steady_tasks_per_min is None
                else round(self.measured_steady_tasks_per_min, 2),
            },
            "measured_over_projected": round(self.ratio, 3),
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


def measure_node(
    target: str, payloads: Sequence[Any], *, mode: str, models: Path | None, workers: int | None
) -> tuple[float, float | None, int, float]:
    """Run one node on the payloads: (tasks/min whole run, steady, workers, duration s)."""
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
                            exit_when_empty=True, metrics_port=None)  # fmt: skip
        report = run_node(config, handle_signals=False)
        with open_store(results_url) as store:
            finished = [r.finished_at for r in store.iter_results()]
    if not finished:
        raise InputError(f"the node run finished no task: {report.outcomes}")
    count = report.plan.workers
    whole = len(finished) * 60.0 / report.duration_s
    return whole, steady_tasks_per_min(finished, count), count, report.duration_s


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
    whole, steady, used, duration = measure_node(
        target, payloads, mode=mode, models=models, workers=workers
    )
    return Validation(projection, whole, steady, used, len(payloads), duration)
