"""How far a shared model server can beat isolated workers on this host: the arithmetic bound.

On a node whose cores are all busy, tasks/min is the cores divided by the CPU a task costs. A
shared server leaves a task's own code (drawing its windows) as it is and adds a round trip to
every model call; the one thing it can save is model CPU, by merging requests that wait into
one execution. So, whatever the server does,

    shared ÷ isolated tasks/min  <=  (own + model) / (own + model / gain(n))

where `own` is a task's CPU outside its model calls, `model` the CPU of its calls run one at a
time in process, and `gain(n)` the samples/s of one batch of n over n separate batch-1 runs of
the same inputs. The bound takes every call merged n at a time at no cost (no round trip, no
queue, no copy); a real server is below it. A workload made of model calls only (`own` = 0, as
`server_bench.py`'s queued variant) is bound by `gain(n)` itself.

The script measures the three on this host, as a worker runs them (one process, one intra-op
thread, `OMP/OPENBLAS/MKL_NUM_THREADS=1`): the task's split over interleaved rounds of the
payloads (its first model call's inputs are kept), then separate and merged runs of those inputs
for each batch size, interleaved, CPU seconds (`time.thread_time`), medians. Prints JSON.

    .venv/bin/python benchmarks/merge_bound.py --target roadchange.tasks:check_segment \\
        --models roadchange/src/roadchange/models --payloads /tmp/rc/cdnet.jsonl \\
        --call-pattern per-window
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"  # as the node's workers (`supervisor.py`): before numpy loads

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from fleetinfer.bench.oneshot import TaskRunner  # noqa: E402
from fleetinfer.bench.payloads import load_payloads, with_call_pattern  # noqa: E402
from fleetinfer.client import ModelHandle  # noqa: E402
from fleetinfer.compile.targets import host_cpu_flags, host_description  # noqa: E402

Tensors = dict[str, np.ndarray[Any, Any]]


class RecordingHandle:
    """A model handle that keeps its model's first call's inputs (copies) in `first`."""

    def __init__(self, handle: ModelHandle, name: str, first: dict[str, Tensors]) -> None:
        self._handle, self._name, self._first = handle, name, first

    def infer(self, inputs: Mapping[str, Any], *, version: int | None = None) -> Tensors:
        if self._name not in self._first:
            self._first[self._name] = {k: np.array(v) for k, v in inputs.items()}
        return self._handle.infer(inputs, version=version)

    def empty(self, shape: tuple[int, ...], dtype: Any = "float32") -> Any:
        return self._handle.empty(shape, dtype)


class RecordingRunner(TaskRunner):
    """A `TaskRunner` whose handles keep each model's first call's inputs."""

    def __init__(self, target: str, models: Path) -> None:
        super().__init__(target, models, threads=1)
        self.first_inputs: dict[str, Tensors] = {}
        self._recording: dict[str, RecordingHandle] = {}

    def model(self, name: str) -> ModelHandle:
        if name not in self._recording:
            self._recording[name] = RecordingHandle(super().model(name), name, self.first_inputs)
        return self._recording[name]


def task_split(runner: TaskRunner, payloads: list[Any], rounds: int) -> dict[str, float]:
    """Median per round of a task's CPU in its model calls and outside them."""
    runner.run(payloads[0])  # warm-up: the session loads
    own, model, calls = [], [], []
    for _ in range(rounds):
        before = dict(runner.stats)
        started = time.thread_time()
        for payload in payloads:
            runner.run(payload)
        total = (time.thread_time() - started) / len(payloads)
        model_s = (runner.stats["model_cpu_s"] - before["model_cpu_s"]) / len(payloads)
        own.append(total - model_s)
        model.append(model_s)
        calls.append((runner.stats["model_calls"] - before["model_calls"]) / len(payloads))
    return {
        "own_cpu_s_per_task": statistics.median(own),
        "model_cpu_s_per_task": statistics.median(model),
        "model_calls_per_task": statistics.median(calls),
    }


def merge_gains(session: Any, inputs: Tensors, batches: list[int], rounds: int) -> dict[str, Any]:
    """For each batch size n: CPU per sample of n batch-1 runs and of one run of n, and their
    ratio (the gain), medians over interleaved rounds."""
    one = {k: v[:1] for k, v in inputs.items()}
    merged = {n: {k: np.repeat(v, n, axis=0) for k, v in one.items()} for n in batches}
    rows: dict[str, Any] = {}
    timings: dict[int, list[tuple[float, float]]] = {n: [] for n in batches}
    for r in range(rounds):
        for n in batches if r % 2 == 0 else batches[::-1]:
            timings[n].append(_separate_then_merged(session, one, merged[n], n))
    for n in batches:
        separate = statistics.median(t[0] for t in timings[n]) / n
        merged_s = statistics.median(t[1] for t in timings[n]) / n
        rows[str(n)] = {
            "separate_cpu_us_per_sample": separate * 1e6,
            "merged_cpu_us_per_sample": merged_s * 1e6,
            "gain": separate / merged_s,
        }
    return rows


def _separate_then_merged(
    session: Any, one: Tensors, merged: Tensors, n: int
) -> tuple[float, float]:
    repeats = max(1, 32 // n)  # about 32 samples each way per round
    started = time.thread_time()
    for _ in range(repeats * n):
        session.run(one)
    middle = time.thread_time()
    for _ in range(repeats):
        session.run(merged)
    ended = time.thread_time()
    return (middle - started) / repeats, (ended - middle) / repeats


def bounds(split: Mapping[str, float], gains: Mapping[str, Any]) -> dict[str, float]:
    own, model = split["own_cpu_s_per_task"], split["model_cpu_s_per_task"]
    return {n: (own + model) / (own + model / row["gain"]) for n, row in gains.items()}


def host() -> dict[str, Any]:
    flags = host_cpu_flags()
    return {
        "cpu": host_description(),
        "avx512_vnni": "avx512_vnni" in flags,
        "avx2": "avx2" in flags,
        "loadavg_1m_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="module:task")
    parser.add_argument("--models", type=Path, required=True, help="model repository")
    parser.add_argument("--payloads", type=Path, required=True, help="JSONL, one payload a line")
    parser.add_argument("--call-pattern", choices=("per-window", "per-segment"))
    parser.add_argument("--tasks", type=int, default=32, help="payloads per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", default="2,3,4,8", help="merged batch sizes")
    args = parser.parse_args()
    sys.path.insert(0, os.getcwd())  # the target's module, as `python -m` and the node find it
    report: dict[str, Any] = {"host": host(), "target": args.target}
    payloads = with_call_pattern(load_payloads(args.payloads, args.tasks), args.call_pattern)
    runner = RecordingRunner(args.target, args.models)
    split = task_split(runner, payloads, args.rounds)
    report["call_pattern"] = args.call_pattern or "as in the payloads"
    report["task_split"] = split
    batches = [int(b) for b in args.batches.split(",")]
    report["models"] = {}
    for name, inputs in runner.first_inputs.items():
        gains = merge_gains(runner.client.session(name, None), inputs, batches, args.rounds)
        report["models"][name] = {
            "input_shapes": {k: list(v.shape) for k, v in inputs.items()},
            "merge": gains,
            "bound_shared_vs_isolated": bounds(split, gains),
            "bound_model_calls_only": {n: row["gain"] for n, row in gains.items()},
        }
    report["host"]["loadavg_1m_at_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
