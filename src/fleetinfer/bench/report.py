"""From raw rounds to the benchmark's JSON: per-round numbers, medians per mode, ratios, limit.

The definitions of every number are in `DEFINITIONS`, written into the JSON beside them.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from fleetinfer.bench.instances import PRICES_AS_OF, InstanceShape
from fleetinfer.bench.measure import MIB, median_by_pid, role_mib, window_cpu_s
from fleetinfer.bench.projection import ModeFootprint, project
from fleetinfer.bench.runner import BenchRun, Calibration, RoundRun

DEFINITIONS = {
    "wall_s": "node start (isolated-per-task: first process spawned) -> last task finished; "
    "the shared model server starts inside the node, so its start is in shared's wall_s, while "
    "Triton is started and ready before the node starts (triton's server_start_s, outside): "
    "compare the steady rates to leave both starts out",
    "tasks_per_min": "succeeded tasks x 60 / wall_s",
    "tasks_per_min_steady": "tasks/min while every worker is busy: with finishes sorted and W "
    "workers (isolated-per-task: W processes at a time), (n - 2W + 1) x 60 / (finish[n-W] - "
    "finish[W-1]), leaving out the ramp-up (each worker's first task, which also carries the "
    "node's start-up) and the drain; null below 3W tasks",
    "model_calls_per_s": "model calls (every infer of a task, counted around the handle) / wall_s",
    "latency_p50_s, latency_p95_s": "per task, worker start -> finish (results store); "
    "isolated-per-task: process spawned -> process exited, its whole life",
    "first_task_s": "node start -> first task finished",
    "ramp_s, drain_s": "with finishes sorted and W workers: node start -> finish[W-1] (until "
    "every worker could have finished a task: start-up and first tasks) and finish[n-W] -> "
    "finish[n-1] (the last tasks, when fewer than W are left to run); the whole run minus both "
    "is the steady window; null below 2W tasks",
    "cpu_utilization": "CPU seconds of the whole process tree over the run / (run_s x cores)",
    "cpu_s_per_task": "CPU seconds of the whole process tree over the run / succeeded tasks; "
    "here and in every CPU figure the PSS sampler's own CPU (sampler_cpu_s, per round: reading "
    "/proc/<pid>/smaps_rollup walks every mapped page) is left out",
    "cpu_s_per_task_steady": "CPU seconds of the node's processes between the first and the "
    "last task finished (from /proc samples) / tasks finished in between; the projection uses "
    "it when present (isolated-per-task: cpu_s_per_task, start-up being part of each task)",
    "node_pss_mib": "median, over the PSS samples of the steady window (first -> last task "
    "finished), of the summed PSS of every process; node_pss_peak_mib: the largest sum",
    "pss_mib": "by role, each process's median PSS over the steady window (isolated-per-task: "
    "each task process's peak, as each lives only for its task)",
    "limit_tasks_per_min": "cores x 60 / warm CPU seconds per task (one process, in-process "
    "client, one intra-op thread, after a warm-up task; measured at the start of every round, "
    "the median round's used: limit.cpu_s_per_task_rounds)",
    "efficiency": "tasks_per_min_steady / limit_tasks_per_min (the limit is a warm, steady "
    "rate too); efficiency_whole_run: tasks_per_min / limit_tasks_per_min, node start-up "
    "included",
    "task_wall_uncontended_s": "latency_p50_s x min(1, busy cores / workers), busy cores = cores "
    "x cpu_utilization: the wall of a task with a core to itself, when the run had more workers "
    "than busy cores (each task then waited for a core); the projection's task wall",
    "ratios": "median over rounds of the ratio of two modes measured in the same round",
    "task_split": "where a task's time and CPU go, per task, means over the round's tasks: "
    "wall_s (task start -> finish, inside the worker), model_wall_s (inside its model calls: "
    "queueing, transport and compute), own_wall_s (the rest: the task's own code, e.g. drawing "
    "windows), own_cpu_s (CPU of the task's own process while it ran: its code, plus the model "
    "when the model runs in process); cpu_s_per_task_steady_by_role: the steady window's CPU "
    "by process role (worker, model_server, triton, zygote, agent, ray_runtime ...) per task",
    "projection": "see fleetinfer.bench.projection: workers by memory and by cores on the "
    "instance, from worker_pss_mib, node_fixed_pss_mib, task_wall_uncontended_s and "
    "cpu_s_per_task_steady (else cpu_s_per_task)",
}
PER_PROCESS_ROLES = ("worker", "task_process")
RATIOS = {
    "shared_vs_isolated_tasks_per_min": ("shared", "isolated", "tasks_per_min"),
    "shared_vs_isolated_tasks_per_min_steady": ("shared", "isolated", "tasks_per_min_steady"),
    "shared_vs_isolated_node_pss": ("shared", "isolated", "node_pss_mib"),
    "shared_vs_triton_tasks_per_min": ("shared", "triton", "tasks_per_min"),
    "shared_vs_triton_tasks_per_min_steady": ("shared", "triton", "tasks_per_min_steady"),
    "shared_vs_isolated_per_task_tasks_per_min": ("shared", "isolated-per-task", "tasks_per_min"),
    "shared_vs_ray_tasks_per_min": ("shared", "ray", "tasks_per_min"),
    "shared_vs_ray_tasks_per_min_steady": ("shared", "ray", "tasks_per_min_steady"),
    "shared_vs_ray_node_pss": ("shared", "ray", "node_pss_mib"),
}


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) with linear interpolation between the two nearest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def limit_tasks_per_min(cores: float, cpu_s_per_task: float) -> float:
    """The physical limit: every core busy with nothing but the task's own compute."""
    return cores * 60.0 / cpu_s_per_task


def efficiency(tasks_per_min: float, limit: float) -> float:
    return tasks_per_min / limit


# -- one round -------------------------------------------------------------------------------


def steady_tasks_per_min(finished_at: Sequence[float], workers: int) -> float | None:
    """Tasks/min while all `workers` are busy (definition in DEFINITIONS); None if too few."""
    times = sorted(finished_at)
    begin, end = workers - 1, len(times) - workers
    if end - begin <= workers or times[end] <= times[begin]:
        return None
    return (end - begin) * 60.0 / (times[end] - times[begin])


def ramp_and_drain(
    started_at: float, finished_at: Sequence[float], workers: int
) -> dict[str, float | None]:
    """Where a whole run loses to its steady rate (definitions in DEFINITIONS)."""
    times = sorted(finished_at)
    if len(times) < 2 * workers:
        return {"ramp_s": None, "drain_s": None}
    return {
        "ramp_s": times[workers - 1] - started_at,
        "drain_s": times[-1] - times[len(times) - workers],
    }


def round_metrics(run: RoundRun, cores: float, workers: int) -> dict[str, Any]:
    """The numbers of one mode in one round."""
    ok = [t for t in run.tasks if t.error is None]
    metrics: dict[str, Any] = {
        "round": run.round,
        "tasks": len(run.tasks),
        "succeeded": len(ok),
        "errors": [t.error for t in run.tasks if t.error is not None][:3],
    }
    if not ok:
        return metrics
    first = min(t.finished_at for t in ok)
    last = max(t.finished_at for t in ok)
    wall_s = last - run.started_at
    run_s = run.ended_at - run.started_at
    latencies = [t.finished_at - t.started_at for t in ok]
    calls = sum(t.model_calls for t in ok)
    metrics |= {
        "wall_s": wall_s,
        "tasks_per_min": len(ok) * 60.0 / wall_s,
        "tasks_per_min_steady": steady_tasks_per_min([t.finished_at for t in ok], workers),
        "model_calls": calls,
        "model_calls_per_s": calls / wall_s,
        "latency_p50_s": percentile(latencies, 0.5),
        "latency_p95_s": percentile(latencies, 0.95),
        "first_task_s": first - run.started_at,
        **ramp_and_drain(run.started_at, [t.finished_at for t in ok], workers),
        "run_s": run_s,
        "cpu_s": run.cpu_s,
        "sampler_cpu_s": run.sampler.cpu_s,
        "cpu_s_per_task": run.cpu_s / len(ok),
        "cpu_utilization": run.cpu_s / (run_s * cores),
        "server_start_s": run.server_start_s,
    }
    return metrics | pss_metrics(run, first, last) | steady_cpu(run, first, last) | task_split(ok)


def task_split(ok: Sequence[Any]) -> dict[str, Any]:
    """Where a task's time goes (DEFINITIONS, task_split); empty without the probe's timings."""
    timed = [t for t in ok if t.model_wall_s is not None and t.task_cpu_s is not None]
    if not timed:
        return {"task_split": {}}
    wall = statistics.fmean(t.finished_at - t.started_at for t in timed)
    model = statistics.fmean(t.model_wall_s for t in timed)
    return {
        "task_split": {
            "wall_s": wall,
            "model_wall_s": model,
            "own_wall_s": wall - model,
            "own_cpu_s": statistics.fmean(t.task_cpu_s for t in timed),
            "model_calls": statistics.fmean(t.model_calls for t in timed),
        }
    }


def steady_cpu(run: RoundRun, first: float, last: float) -> dict[str, Any]:
    """CPU seconds per task between the first and the last finished task, from the samples of
    long-lived processes (start-up left out); isolated-per-task has none: each task is a
    process, its start-up is its cost, and cpu_s_per_task already says it."""
    samples = run.sampler.window(first, last)
    if run.mode == "isolated-per-task" or len(samples) < 2:
        return {"cpu_s_per_task_steady": None, "cpu_s_per_task_steady_by_role": {}}
    start, end = samples[0].at, samples[-1].at
    done = sum(1 for t in run.tasks if t.error is None and start < t.finished_at <= end)
    return {
        "cpu_s_per_task_steady": window_cpu_s(samples) / done if done else None,
        "cpu_s_per_task_steady_by_role": cpu_by_role(samples, run.sampler.roles, done),
    }


def cpu_by_role(samples: Sequence[Any], roles: Mapping[int, str], done: int) -> dict[str, float]:
    """CPU seconds per task of each role's processes between the first and the last sample."""
    if not done:
        return {}
    first, last = samples[0].cpu_s_by_pid, samples[-1].cpu_s_by_pid
    by_role: dict[str, float] = {}
    for pid in first.keys() & last.keys():
        role = roles.get(pid, "other")
        by_role[role] = by_role.get(role, 0.0) + (last[pid] - first[pid]) / done
    return {role: round(cpu_s, 4) for role, cpu_s in sorted(by_role.items())}


def pss_metrics(run: RoundRun, first: float, last: float) -> dict[str, Any]:
    samples = run.sampler.window(first, last) or run.sampler.samples
    if not samples:
        return {"node_pss_mib": None, "node_pss_peak_mib": None, "pss_mib": {}}
    roles = run.sampler.roles
    by_pid = median_by_pid(samples)
    peaks = run.sampler.peak_bytes
    by_pid |= {pid: peaks[pid] for pid, role in roles.items() if role == "task_process"}
    per_process = [size for pid, size in by_pid.items() if roles.get(pid) in PER_PROCESS_ROLES]
    fixed = [size for pid, size in by_pid.items() if roles.get(pid) not in PER_PROCESS_ROLES]
    return {
        "node_pss_mib": statistics.median(s.total_bytes for s in samples) / MIB,
        "node_pss_peak_mib": max(s.total_bytes for s in run.sampler.samples) / MIB,
        "pss_mib": role_mib(by_pid, roles),
        "worker_pss_mib": statistics.median(per_process) / MIB if per_process else None,
        "node_fixed_pss_mib": sum(fixed) / MIB,
        "pss_samples": len(samples),
    }


# -- one mode --------------------------------------------------------------------------------

_MEDIANS = (
    "wall_s", "tasks_per_min", "tasks_per_min_steady", "model_calls_per_s", "latency_p50_s",
    "latency_p95_s", "first_task_s", "ramp_s", "drain_s", "cpu_s_per_task", "cpu_s_per_task_steady", "cpu_utilization", "node_pss_mib",
    "node_pss_peak_mib", "worker_pss_mib", "node_fixed_pss_mib", "server_start_s",
)  # fmt: skip


def median_of(rounds: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rounds if r.get(key) is not None]
    return statistics.median(values) if values else None


def mode_summary(
    mode: str,
    runs: Sequence[RoundRun],
    cores: float,
    limit: float,
    shape: InstanceShape,
    *,
    workers: int,
) -> dict[str, Any]:
    """Medians over the rounds, the efficiency, the projection, and the rounds themselves."""
    rounds = [round_metrics(run, cores, workers) for run in runs]
    failed = [r for r in rounds if not r["succeeded"]]
    if failed:
        return {"error": f"round {failed[0]['round']}: no task succeeded: {failed[0]['errors']}"}
    summary: dict[str, Any] = {key: median_of(rounds, key) for key in _MEDIANS}
    summary["tasks"] = rounds[0]["tasks"]
    summary["succeeded_per_round"] = [r["succeeded"] for r in rounds]
    summary["model_calls_per_round"] = [r["model_calls"] for r in rounds]
    summary["pss_mib"] = _median_roles([r["pss_mib"] for r in rounds])
    summary["task_split"] = _median_roles([r.get("task_split", {}) for r in rounds], digits=4)
    summary["cpu_s_per_task_steady_by_role"] = _median_roles(
        [r.get("cpu_s_per_task_steady_by_role", {}) for r in rounds], digits=4
    )
    summary["limit_tasks_per_min"] = limit
    steady = summary["tasks_per_min_steady"]
    summary["efficiency"] = efficiency(steady if steady else summary["tasks_per_min"], limit)
    summary["efficiency_whole_run"] = efficiency(summary["tasks_per_min"], limit)
    busy_cores = cores * summary["cpu_utilization"]
    summary["task_wall_uncontended_s"] = summary["latency_p50_s"] * min(1.0, busy_cores / workers)
    summary["projection"] = _projection(mode, summary, shape)
    if mode == "isolated-per-task":
        summary["decomposition"] = decomposition([p for run in runs for p in run.phases])
    summary["rounds"] = rounds
    return summary


def _median_roles(per_round: Sequence[Mapping[str, float]], digits: int = 1) -> dict[str, float]:
    roles = sorted({role for r in per_round for role in r}, key=_role_order)
    return {
        role: round(statistics.median(r[role] for r in per_round if role in r), digits)
        for role in roles
    }


def _role_order(role: str) -> tuple[int, str, int]:
    name, _, number = role.rpartition("_")
    if number.isdigit():
        return (1, name, int(number))
    return (0, role, 0)


def _projection(mode: str, summary: Mapping[str, Any], shape: InstanceShape) -> dict[str, Any]:
    worker = summary.get("worker_pss_mib")
    if not worker:
        return {"error": "no worker PSS sample was taken (a run shorter than the sample interval)"}
    footprint = ModeFootprint(
        mode=mode,
        worker_mib=worker,
        node_fixed_mib=summary["node_fixed_pss_mib"] or 0.0,
        task_wall_s=summary["task_wall_uncontended_s"],
        task_cpu_s=summary["cpu_s_per_task_steady"] or summary["cpu_s_per_task"],
    )
    return project(footprint, shape).to_json() | {"footprint": _footprint_json(footprint)}


def _footprint_json(footprint: ModeFootprint) -> dict[str, float]:
    return {
        "worker_mib": footprint.worker_mib,
        "node_fixed_mib": footprint.node_fixed_mib,
        "task_wall_s": footprint.task_wall_s,
        "task_cpu_s": footprint.task_cpu_s,
    }


def decomposition(phases: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """Median seconds of each stage of a task process's life, and its share of the median total."""
    if not phases:
        return {}
    medians = {key: statistics.median(p[key] for p in phases) for key in phases[0]}
    total = medians["total_s"]
    shares = {
        key.removesuffix("_s") + "_share": value / total
        for key, value in medians.items()
        if key != "total_s"
    }
    return {"processes": len(phases), **medians, **shares}


# -- the whole benchmark -----------------------------------------------------------------------


def paired_ratio(
    runs: Mapping[str, Sequence[RoundRun]], cores: float, workers: int, a: str, b: str, key: str
) -> float | None:
    """Median over rounds of mode a's value ÷ mode b's value in the same round."""
    ratios = []
    for run_a, run_b in zip(runs.get(a, ()), runs.get(b, ()), strict=False):
        value_a = round_metrics(run_a, cores, workers).get(key)
        value_b = round_metrics(run_b, cores, workers).get(key)
        if value_a is not None and value_b:
            ratios.append(value_a / value_b)
    return statistics.median(ratios) if ratios else None


def build_report(run: BenchRun, shape: InstanceShape, *, payloads_file: str) -> dict[str, Any]:
    config, calibration = run.config, run.calibration
    limit = limit_tasks_per_min(run.cores, calibration.cpu_s_per_task)
    modes: dict[str, Any] = {}
    for mode in config.modes:
        if mode in run.errors:
            modes[mode] = {"error": run.errors[mode]}
            continue
        modes[mode] = mode_summary(
            mode, run.runs[mode], run.cores, limit, shape, workers=config.workers
        )
    usable = {m for m, s in modes.items() if "error" not in s}
    ratios = {
        name: paired_ratio(run.runs, run.cores, config.workers, a, b, key)
        if {a, b} <= usable
        else None
        for name, (a, b, key) in RATIOS.items()
    }
    return {
        "bench": _settings(run, payloads_file),
        "machine": machine(run.cores),
        "limit": _limit_json(calibration, run.cores, limit),
        "instance": {
            "name": shape.name,
            "vcpu": shape.vcpu,
            "memory_gib": shape.memory_gib,
            "usd_per_hour": shape.usd_per_hour,
            "arch": shape.arch,
            "prices_as_of": PRICES_AS_OF,
        },
        "modes": modes,
        "ratios": ratios,
        "definitions": DEFINITIONS,
    }


def _settings(run: BenchRun, payloads_file: str) -> dict[str, Any]:
    config = run.config
    return {
        "target": config.target,
        "models": str(config.models),
        "payloads": payloads_file,
        "tasks": len(config.payloads),
        "rounds": config.rounds,
        "workers": config.workers,
        "preload": config.preload,
        "thread_budget": config.thread_budget,
        # the model server's layout in the shared mode (`fleetinfer run --server-instances
        # --server-threads` runs the same): one model's concurrent executions, threads of each
        "server_instances": config.server_executions,
        "server_threads": config.server_threads,
        "threads": {
            "isolated-per-task": f"{config.process_threads} intra-op per process",
            "isolated": f"{config.process_threads} intra-op per worker",
            "shared": f"{config.server_executions} instance(s) x {config.server_threads} "
            "intra-op per model in the model server",
            "triton": f"{config.server_executions} instance(s) x {config.server_threads} "
            "intra-op per model in Triton",
            "ray": f"one Ray actor, {config.server_executions} concurrent call(s) x "
            f"{config.server_threads} intra-op per model; tasks as Ray tasks, "
            f"{config.workers} at a time",
        },
        "order": run.order,
    }


def _limit_json(calibration: Calibration, cores: float, limit: float) -> dict[str, Any]:
    return {
        "cores": cores,
        "cpu_s_per_task": calibration.cpu_s_per_task,
        "cpu_s_per_task_rounds": list(calibration.cpu_s_per_task_rounds),
        "wall_s_per_task": calibration.wall_s_per_task,
        "model_calls_per_task": calibration.model_calls_per_task,
        "calibration_tasks": calibration.tasks,
        "calibration_threads": calibration.threads,
        "tasks_per_min": limit,
    }


def machine(cores: float) -> dict[str, Any]:
    return {
        "cores": cores,
        "cpu": _cpu_model(),
        "loadavg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
