"""Sessions and timing: interleaved rounds, samples/s, p50 / p99 latency, memory as PSS.

The machines are shared and noisy, so variants are compared in one process, interleaved
(A B A B ...) over several rounds; throughput is the median over rounds and the latency percentiles
pool every call of every round. `cpu_samples_per_s` divides by the process CPU time instead of the
wall clock: with one intra-op thread it is the cost of the work itself, whatever else the machine
runs (with more threads it also counts ONNX Runtime's spin-waiting). `instances` > 1 runs that many sessions in parallel threads (ONNX
Runtime releases the GIL while it runs), as the server's instance count does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from fleetinfer.errors import ArtifactLoadError

Array = np.ndarray[Any, Any]
Tensors = dict[str, Array]

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def open_session(
    path: Path,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    intra_op_threads: int = 0,
    session_config: Mapping[str, str] | None = None,
    optimization_level: str = "all",
    optimized_model_path: Path | None = None,
) -> Any:
    """An ONNX Runtime session; `optimized_model_path` saves the graph after optimization."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = _LEVELS[optimization_level]
    for key, value in (session_config or {}).items():
        options.add_session_config_entry(key, value)
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own unexported exception types
        raise ArtifactLoadError(f"onnxruntime could not load {path}: {exc}") from exc


class SessionModel:
    """`infer(inputs) -> outputs` over one session (the shape roadchange's pipeline calls)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.output_names = [o.name for o in session.get_outputs()]

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        values = self.session.run(self.output_names, dict(inputs))
        return dict(zip(self.output_names, values, strict=True))


@dataclass(frozen=True, slots=True)
class Timing:
    """Throughput and latency of one variant over all its rounds."""

    samples_per_s: float
    p50_latency_ms: float
    p99_latency_ms: float
    calls: int
    rounds: int
    cpu_samples_per_s: float = 0.0  # samples per process CPU-second: robust to a busy machine


@dataclass(frozen=True, slots=True)
class _Round:
    samples_per_s: float
    latencies_ms: list[float]
    cpu_samples_per_s: float


def _loop(session: Any, inputs: Tensors, deadline: float, latencies_ms: list[float]) -> None:
    while True:
        started = time.perf_counter()
        session.run(None, inputs)
        ended = time.perf_counter()
        latencies_ms.append((ended - started) * 1000.0)
        if ended >= deadline:
            return


def timed_round(sessions: Sequence[Any], inputs: Tensors, duration_s: float) -> _Round:
    """Every session calls `run` in its own thread until `duration_s` has passed."""
    batch = next(iter(inputs.values())).shape[0]
    per_thread: list[list[float]] = [[] for _ in sessions]
    started, cpu_started = time.perf_counter(), time.process_time()
    deadline = started + duration_s
    threads = [
        threading.Thread(target=_loop, args=(s, inputs, deadline, lat))
        for s, lat in zip(sessions, per_thread, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    latencies = [x for lat in per_thread for x in lat]
    samples = len(latencies) * batch
    return _Round(samples / elapsed, latencies, samples / cpu_s if cpu_s > 0 else 0.0)


def warm_up(sessions: Sequence[Any], inputs: Tensors, calls: int = 3) -> None:
    for session in sessions:
        for _ in range(calls):
            session.run(None, inputs)


def interleaved(variants: Mapping[str, Callable[[], _Round]], *, rounds: int) -> dict[str, Timing]:
    """Run each variant once per round, in order, `rounds` times; summarize per variant."""
    results: dict[str, list[_Round]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            results[name].append(run())
    return {name: summarize(found) for name, found in results.items()}


def summarize(found: Sequence[_Round]) -> Timing:
    latencies = np.array([x for r in found for x in r.latencies_ms])
    return Timing(
        samples_per_s=float(np.median([r.samples_per_s for r in found])),
        p50_latency_ms=float(np.percentile(latencies, 50)),
        p99_latency_ms=float(np.percentile(latencies, 99)),
        calls=int(latencies.size),
        rounds=len(found),
        cpu_samples_per_s=float(np.median([r.cpu_samples_per_s for r in found])),
    )


def pss_mb(pid: int | str = "self") -> float:
    """Proportional set size of a process in MiB (`/proc/<pid>/smaps_rollup`); 0 if unreadable."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text(encoding="utf-8")
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024.0
    return 0.0
