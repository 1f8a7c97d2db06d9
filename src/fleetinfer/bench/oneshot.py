"""One task in a fresh process, as the first production design ran every task (`isolated-per-task`).

    python -m fleetinfer.bench.oneshot --target MODULE:TASK --models REPO --threads 1 \\
        --spawned-at EPOCH_S  < payloads.json

The process does what a fresh task process does, nothing more: import the app, build an in-process
model client, load the models the task asks for, run the task once, exit. It prints one JSON line
with the moments that split its life (all `time.time()`):

    spawned_at            the parent, just before it started this process
    interpreter_ready_at  the first line of this module (Python started, site imported)
    imports_done_at       the app module imported, fleetinfer.client and ONNX Runtime imported
    task_started_at       the task called
    task_done_at          the task returned
    load_s                seconds, inside the task, spent loading model sessions

The in-process client loads a session on the first `infer` of each model; the handles given to the
task load it explicitly just before that first call and time it, so "model load" is measured apart
from "compute" and only the models (and versions) the task uses are loaded, once each.

`--calibrate` instead runs the payloads one after the other in this one process, the first as a
warm-up, and prints the CPU seconds per task of the others (`time.process_time()`: every thread of
the process): the compute cost that the efficiency limit is built on.
"""

from __future__ import annotations

import time

INTERPRETER_READY_AT = time.time()

import argparse  # noqa: E402 - the moment above is taken before any import
import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from fleetinfer.client import InProcessModelClient, ModelHandle, Tensors
    from fleetinfer.task import Task, TaskContext


class TimedLoadHandle:
    """A handle that loads its session before the first call (timed), then counts each call and
    the CPU it took on the calling thread (`model_cpu_s`: all of it with in-process sessions of
    one intra-op thread)."""

    def __init__(self, client: InProcessModelClient, name: str, stats: dict[str, float]) -> None:
        self._client, self._name, self._stats = client, name, stats
        self._handle = client.model(name)  # unknown names fail here, as in a worker
        self._loaded: set[int | None] = set()

    def infer(self, inputs: Mapping[str, Any], *, version: int | None = None) -> Tensors:
        if version not in self._loaded:
            started = time.time()
            self._client.session(self._name, version)
            self._stats["load_s"] += time.time() - started
            self._loaded.add(version)
        self._stats["model_calls"] += 1
        started_cpu = time.thread_time()
        try:
            return self._handle.infer(inputs, version=version)
        finally:
            self._stats["model_cpu_s"] += time.thread_time() - started_cpu

    def empty(self, shape: tuple[int, ...], dtype: Any = "float32") -> np.ndarray[Any, Any]:
        return self._handle.empty(shape, dtype)


def _context(task: Task, models: Any) -> TaskContext:
    import logging
    import uuid

    from fleetinfer.task import TaskContext

    return TaskContext(
        task_id=uuid.uuid4().hex,
        task_name=task.name,
        receive_count=1,
        logger=logging.getLogger(f"fleetinfer.task.{task.name}"),
        _heartbeat=lambda: None,
        _models=models,
    )


class TaskRunner:
    """The task and an in-process client; handles are kept per model for the process's life.
    `stats` adds up the model load (`load_s`), the calls (`model_calls`) and their CPU
    (`model_cpu_s`) over every run."""

    def __init__(self, target: str, repository: Path, threads: int) -> None:
        from fleetinfer.client import InProcessModelClient
        from fleetinfer.server import session  # noqa: F401 - ONNX Runtime, imported now
        from fleetinfer.task import resolve_target

        resolved = resolve_target(target)
        self.task = resolved.app.get(resolved.task_name())
        self.client = InProcessModelClient(repository, intra_op_threads=threads)
        self.stats = {"load_s": 0.0, "model_calls": 0.0, "model_cpu_s": 0.0}
        self._handles: dict[str, TimedLoadHandle] = {}

    def model(self, name: str) -> ModelHandle:
        if name not in self._handles:
            self._handles[name] = TimedLoadHandle(self.client, name, self.stats)
        return self._handles[name]

    def run(self, payload: Any) -> Any:
        return self.task(_context(self.task, self.model), payload)


def run_once(args: argparse.Namespace, payload: Any) -> dict[str, Any]:
    report: dict[str, Any] = {"spawned_at": args.spawned_at}
    report["interpreter_ready_at"] = INTERPRETER_READY_AT
    runner = TaskRunner(args.target, args.models, args.threads)
    report["imports_done_at"] = time.time()
    report["task_started_at"] = time.time()
    try:
        runner.run(payload)
        report["error"] = None
    except Exception as exc:  # the task's own failure is reported, as a worker would store it
        report["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    report["task_done_at"] = time.time()
    report["load_s"] = runner.stats["load_s"]
    report["model_calls"] = int(runner.stats["model_calls"])
    return report


def calibrate(args: argparse.Namespace, payloads: Sequence[Any]) -> dict[str, Any]:
    if len(payloads) < 2:
        raise SystemExit("oneshot --calibrate: expected at least 2 payloads (1 warm-up)")
    runner = TaskRunner(args.target, args.models, args.threads)
    runner.run(payloads[0])
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    calls_before = runner.stats["model_calls"]
    for payload in payloads[1:]:
        runner.run(payload)
    tasks = len(payloads) - 1
    return {
        "tasks": tasks,
        "cpu_s_per_task": (time.process_time() - cpu_started) / tasks,
        "wall_s_per_task": (time.perf_counter() - wall_started) / tasks,
        "model_calls_per_task": (runner.stats["model_calls"] - calls_before) / tasks,
        "threads": args.threads,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetinfer.bench.oneshot")
    parser.add_argument("--target", required=True, help="module:task")
    parser.add_argument("--models", type=Path, required=True, help="model repository")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--spawned-at", type=float, default=INTERPRETER_READY_AT)
    parser.add_argument("--calibrate", action="store_true")
    args = parser.parse_args(argv)
    payloads = json.load(sys.stdin)  # a JSON list of payloads
    report = calibrate(args, payloads) if args.calibrate else run_once(args, payloads[0])
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
