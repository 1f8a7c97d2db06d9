"""Runs a benchmark: the same N payloads through every mode, interleaved over rounds.

    isolated-per-task  every task in a fresh `python -m fleetinfer.bench.oneshot` process
                       (import, load its own model, run once, exit), W at a time
    isolated           a node of W workers, each with its own in-process model sessions
    shared             a node of W workers calling the node's model server
    triton             a node of W workers calling a Triton server (PyTriton), same ONNX files
    ray                W Ray tasks at a time calling one Ray actor that holds the models
                       (`ray_driver.py`; the optional extra `fleetinfer[ray]`)

Thread budget `T` (default: the usable cores): the shared server and Triton run each model as
I concurrent executions (`server_instances`; default T, measured fastest here: one
single-threaded execution per core, no idle intra-op threads spinning) of max(1, T // I) threads;
isolated workers and per-task processes get max(1, T // W) each. (Left alone,
an in-process session takes the repository's `intra_op_threads`, whose 0 means ONNX Runtime's
default of one thread per core in *every* worker; the node sets OMP/OpenBLAS/MKL pools to 1 but
ORT has its own pool, so the benchmark sets it.)

Round r runs the modes rotated by r (A B C D, then B C D A, …), so slow drift of a shared machine
spreads over every mode. Each (mode, round) gets a fresh node, a fresh SQLite queue and store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetinfer.bench.measure import PssSampler, tree_cpu_s
from fleetinfer.bench.probe import PROBE_TARGET, TARGET_ENV
from fleetinfer.bench.ray_mode import RayRunError, ray_unavailable, run_ray
from fleetinfer.bench.triton import TritonServer, TritonServerError, triton_unavailable
from fleetinfer.errors import ConfigError, FleetinferError
from fleetinfer.node.agent import NodeConfig, run_node
from fleetinfer.node.sizing import usable_cores
from fleetinfer.node.supervisor import worker_environment
from fleetinfer.queue import open_broker
from fleetinfer.results import TaskStatus, open_store
from fleetinfer.task import resolve_target, send_tasks

MODES = ("isolated-per-task", "isolated", "shared", "triton", "ray")
NODE_CLIENTS = {"isolated": "inprocess", "shared": "shared", "triton": "triton"}

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchConfig:
    """One benchmark: what to run, on which payloads, how."""

    target: str
    models: Path
    payloads: tuple[Any, ...]
    modes: tuple[str, ...] = MODES
    rounds: int = 3
    workers: int = 2
    threads: int = 0  # 0: the usable cores
    pytriton_python: Path | None = None
    server_instances: int = 0  # 0: one per thread of the budget
    preload: bool = True  # node modes: workers forked from a preloaded zygote, as `run` does
    calibration_tasks: int = 5
    sample_interval_s: float = 0.25

    def __post_init__(self) -> None:
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes or len(set(self.modes)) != len(self.modes):
            raise ConfigError(
                f"--modes must name each of {', '.join(MODES)} at most once, got "
                f"{','.join(self.modes)!r}"
            )
        if self.server_instances < 0:
            raise ConfigError(f"server_instances must be >= 0, got {self.server_instances}")
        for name in ("rounds", "workers", "calibration_tasks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 1 (0: the usable cores), got {self.threads}")
        if not self.models.is_dir():
            raise ConfigError(f"model repository {str(self.models)!r} is not a folder")
        if not self.payloads:
            raise ConfigError("a benchmark needs at least one payload")

    @property
    def thread_budget(self) -> int:
        return self.threads or max(1, int(usable_cores()))

    @property
    def server_executions(self) -> int:
        """Concurrent executions of a model in the shared server and in Triton."""
        return self.server_instances or self.thread_budget

    @property
    def server_threads(self) -> int:
        """Intra-op threads of each of those executions."""
        return max(1, self.thread_budget // self.server_executions)

    @property
    def process_threads(self) -> int:
        """Intra-op threads of each isolated worker and each per-task process."""
        return max(1, self.thread_budget // self.workers)


def rotation(modes: tuple[str, ...], rounds: int) -> list[list[str]]:
    """The order of the modes in each round: rotated by one each round."""
    n = len(modes)
    return [[modes[(r + i) % n] for i in range(n)] for r in range(rounds)]


@dataclass(slots=True)
class TaskTiming:
    """One task: when it started and finished (`time.time()`), its model calls, its outcome."""

    started_at: float
    finished_at: float
    model_calls: int
    error: str | None = None
    model_wall_s: float | None = None  # inside the task's model calls (the probe's timing)
    task_cpu_s: float | None = None  # CPU of the task's own process while it ran


@dataclass(slots=True)
class RoundRun:
    """One mode in one round, raw: what the report's statistics are computed from."""

    mode: str
    round: int
    started_at: float
    ended_at: float
    cpu_s: float
    tasks: list[TaskTiming]
    sampler: PssSampler
    phases: list[dict[str, float]] = field(default_factory=list)  # isolated-per-task only
    server_start_s: float | None = None  # triton only: not inside started_at..ended_at


@dataclass(slots=True)
class Calibration:
    """Warm CPU seconds per task, one process, in-process client, after a warm-up task. Measured
    at the start of every round; the limit uses the median round (`median_of`), since one
    measurement moves with the machine's load by 10 % and more."""

    tasks: int
    cpu_s_per_task: float
    wall_s_per_task: float
    model_calls_per_task: float
    threads: int
    cpu_s_per_task_rounds: tuple[float, ...] = ()

    @staticmethod
    def median_of(rounds: Sequence[Calibration]) -> Calibration:
        middle = sorted(rounds, key=lambda c: c.cpu_s_per_task)[(len(rounds) - 1) // 2]
        return dataclasses.replace(
            middle, cpu_s_per_task_rounds=tuple(c.cpu_s_per_task for c in rounds)
        )


@dataclass(slots=True)
class BenchRun:
    config: BenchConfig
    order: list[list[str]]
    calibration: Calibration
    runs: dict[str, list[RoundRun]]
    errors: dict[str, str]
    cores: float


def run_bench(config: BenchConfig, progress: Progress | None = None) -> BenchRun:
    """Calibrate the limit, then run every mode in every round (rotated)."""
    say = progress or (lambda _text: None)
    resolve_target(config.target)  # a wrong target fails here, before any process starts
    order = rotation(config.modes, config.rounds)
    calibrations: list[Calibration] = []
    runs: dict[str, list[RoundRun]] = {mode: [] for mode in config.modes}
    errors: dict[str, str] = {}
    if "triton" in config.modes:
        why = triton_unavailable(config.pytriton_python)
        if why is not None:
            errors["triton"] = why
    if "ray" in config.modes:
        why = ray_unavailable()
        if why is not None:
            errors["ray"] = why
    for number, modes in enumerate(order, 1):
        say(f"round {number}/{config.rounds}: calibrating (warm CPU seconds per task, one process)")
        calibrations.append(calibrate(config))
        for mode in modes:
            if mode in errors:
                continue
            say(f"round {number}/{config.rounds}: {mode}")
            try:
                runs[mode].append(run_mode(config, mode, number))
            except (FleetinferError, TritonServerError, RayRunError) as exc:
                errors[mode] = f"{type(exc).__name__}: {exc}"
    calibration = Calibration.median_of(calibrations)
    return BenchRun(config, order, calibration, runs, errors, usable_cores())


def run_mode(config: BenchConfig, mode: str, number: int) -> RoundRun:
    with tempfile.TemporaryDirectory(prefix=f"fleetinfer-bench-{mode}-") as folder:
        workdir = Path(folder)
        if mode == "isolated-per-task":
            return run_per_task(config, number)
        if mode == "ray":
            return run_ray(config, number, workdir)
        if mode == "triton":
            with start_triton(config) as server:
                server_cpu_s = server.cpu_s()
                run = run_on_node(config, mode, number, workdir, triton_url=server.url)
                run.cpu_s += server.cpu_s() - server_cpu_s  # still running: not in rusage
            run.server_start_s = server.start_s
            return run
        return run_on_node(config, mode, number, workdir)


@contextmanager
def start_triton(config: BenchConfig) -> Iterator[TritonServer]:
    """A ready Triton server (a failed start is tried once more: `TritonServer`)."""
    assert config.pytriton_python is not None
    with TritonServer(
        config.pytriton_python,
        config.models,
        threads=config.server_threads,
        instances=config.server_executions,
        start_timeout_s=120.0,
    ) as server:
        yield server


# -- node modes ------------------------------------------------------------------------------


def run_on_node(
    config: BenchConfig, mode: str, number: int, workdir: Path, *, triton_url: str | None = None
) -> RoundRun:
    """A fresh node on a fresh queue holding the N payloads, until the queue is empty."""
    queue_url = f"sqlite:///{workdir / 'queue.db'}"
    results_url = f"sqlite:///{workdir / 'results.db'}"
    task_name = resolve_target(config.target).task_name()
    with open_broker(queue_url) as broker:
        send_tasks(broker, task_name, config.payloads)
    node = NodeConfig(
        target=PROBE_TARGET,
        queue_url=queue_url,
        results_url=results_url,
        models=config.models,
        client_mode=NODE_CLIENTS[mode],
        workers=config.workers,
        exit_when_empty=True,
        metrics_port=None,
        grace_s=30.0,
        poll_interval_s=0.1,
        server_intra_op_threads=config.server_threads if mode == "shared" else None,
        server_instance_count=config.server_executions if mode == "shared" else None,
        worker_intra_op_threads=config.process_threads if mode == "isolated" else None,
        triton_url=triton_url,
        preload_workers=config.preload,
    )
    with (
        _environment(TARGET_ENV, config.target),
        PssSampler(config.sample_interval_s) as sampler,
    ):
        cpu_before, started_at = tree_cpu_s(), time.time()
        run_node(node, handle_signals=False)
        ended_at, cpu_s = time.time(), tree_cpu_s() - cpu_before - sampler.cpu_s
    with open_store(results_url) as store:
        tasks = [_timing(result) for result in store.iter_results()]
    return RoundRun(mode, number, started_at, ended_at, cpu_s, tasks, sampler)


def _timing(result: Any) -> TaskTiming:
    value = result.value if isinstance(result.value, dict) else {}
    error = None if result.status is TaskStatus.SUCCEEDED else f"{result.status}: {result.error}"
    calls = int(value.get("model_calls", 0))
    model_wall_s, task_cpu_s = value.get("model_wall_s"), value.get("task_cpu_s")
    return TaskTiming(result.started_at, result.finished_at, calls, error, model_wall_s, task_cpu_s)


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """Workers inherit the agent's environment: the probe reads the target from it."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


# -- isolated-per-task -----------------------------------------------------------------------


def oneshot_command(config: BenchConfig, *, spawned_at: float | None = None) -> list[str]:
    command = [sys.executable, "-m", "fleetinfer.bench.oneshot", "--target", config.target]
    command += ["--models", str(config.models), "--threads", str(config.process_threads)]
    if spawned_at is None:
        return [*command, "--calibrate"]
    return [*command, "--spawned-at", repr(spawned_at)]


def run_per_task(config: BenchConfig, number: int) -> RoundRun:
    """Every payload in its own fresh process, `workers` processes at a time."""
    with PssSampler(config.sample_interval_s) as sampler:
        cpu_before, started_at = tree_cpu_s(), time.time()
        with ThreadPoolExecutor(max_workers=config.workers) as pool:
            reports = list(pool.map(lambda p: _one_task_process(config, p), config.payloads))
        ended_at, cpu_s = time.time(), tree_cpu_s() - cpu_before - sampler.cpu_s
    tasks = [
        TaskTiming(r["spawned_at"], r["exited_at"], int(r["model_calls"]), r["error"])
        for r in reports
    ]
    phases = [phases_of(r) for r in reports if r["error"] is None]
    return RoundRun(
        "isolated-per-task", number, started_at, ended_at, cpu_s, tasks, sampler, phases
    )


def _one_task_process(config: BenchConfig, payload: Any) -> dict[str, Any]:
    spawned_at = time.time()
    done = subprocess.run(
        oneshot_command(config, spawned_at=spawned_at), input=json.dumps([payload]),
        capture_output=True, text=True, env=worker_environment(), check=False,
    )  # fmt: skip
    exited_at = time.time()
    try:
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        why = f"exit code {done.returncode}: {done.stderr.strip()[-600:]}"
        return {"spawned_at": spawned_at, "exited_at": exited_at, "model_calls": 0, "error": why}
    report["exited_at"] = exited_at
    return report


def phases_of(report: dict[str, Any]) -> dict[str, float]:
    """Seconds of each stage of one task process's life."""
    task_s = report["task_done_at"] - report["task_started_at"]
    return {
        "process_start_s": report["interpreter_ready_at"] - report["spawned_at"],
        "imports_s": report["imports_done_at"] - report["interpreter_ready_at"],
        "model_load_s": report["load_s"],
        "compute_s": task_s - report["load_s"],
        "exit_s": report["exited_at"] - report["task_done_at"],
        "total_s": report["exited_at"] - report["spawned_at"],
    }


# -- the limit -------------------------------------------------------------------------------


def calibrate(config: BenchConfig) -> Calibration:
    """CPU seconds per task of pure compute: one process, one intra-op thread, warm."""
    payloads = [
        config.payloads[i % len(config.payloads)] for i in range(config.calibration_tasks + 1)
    ]
    command = oneshot_command(config)
    command[command.index("--threads") + 1] = "1"
    done = subprocess.run(
        command, input=json.dumps(payloads), capture_output=True, text=True,
        env=worker_environment(), check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise ConfigError(
            f"the task failed in the calibration process ({' '.join(command[:4])} …): "
            f"{done.stderr.strip()[-1200:]}"
        )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return Calibration(
        tasks=int(report["tasks"]),
        cpu_s_per_task=float(report["cpu_s_per_task"]),
        wall_s_per_task=float(report["wall_s_per_task"]),
        model_calls_per_task=float(report["model_calls_per_task"]),
        threads=int(report["threads"]),
    )
