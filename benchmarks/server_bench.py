"""Shared model server vs in-process ONNX Runtime: throughput, per-request overhead, memory.

Rows (one JSON object on stdout, or in --json):

- `throughput`: CDNet at batch 1, W worker processes each with T ONNX Runtime threads in process,
  against W client processes of one server running W concurrent executions of T threads (the same
  total threads). Variants interleaved (A B A B ...) over the rounds; medians and their ratio.
- `overhead`: an identity model with a 2 MiB input, one client, sequential requests: median
  latency through the server minus median latency of the same model in process.
- `memory`: 8 workers that have each run CDNet: total PSS (`/proc/<pid>/smaps_rollup`) of 8
  in-process workers vs 8 shared-server clients (the server itself reported apart).
- `batching`: CDNet with one thread, N batch-1 runs vs one batch-N run: whether merging helps on
  CPU (the reason `max_queue_delay_us` defaults to 0).
- `triton`: the comparison row against Triton through PyTriton, or why it was not run.

    .venv/bin/python benchmarks/server_bench.py --json server_bench.json
    .venv/bin/python benchmarks/server_bench.py --rounds 3 --seconds 2 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers builds the identity model and the CDNet stand-in

IDENTITY_FEATURES = 512 * 1024  # 2 MiB of float32
TARGETS = {"throughput_ratio_min": 0.97, "overhead_us_max": 150.0, "memory_ratio_max": 0.25}


# -- worker side: `server_bench.py worker MODE TARGET MODEL THREADS` -----------------------------


def worker_main(mode: str, target: str, model: str, threads: int) -> None:
    """A benchmark worker: reads commands on stdin, answers one line each on stdout."""
    from fleetinfer.client import ModelClient

    if mode == "floor":  # what any worker costs before it touches a model
        print("ready", flush=True)
        for line in sys.stdin:
            if line.startswith("pss"):
                print(json.dumps({"pss_bytes": pss_bytes(os.getpid())}), flush=True)
            elif not line.startswith("run"):
                return
            else:
                print(json.dumps({"samples": 0, "elapsed_s": 1.0}), flush=True)
        return
    if mode == "shared":
        client = ModelClient.from_mode("shared", socket_path=target)
    else:
        client = ModelClient.from_mode("inprocess", repository=target, intra_op_threads=threads)
    handle = client.model(model)
    inputs = _example_inputs(Path(target) if mode == "inprocess" else None, model)
    handle.infer(inputs)  # load and warm up
    print("ready", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "run":
            print(json.dumps(_run_for(handle, inputs, float(args[0]))), flush=True)
        elif command == "lat":
            print(json.dumps(_latencies(handle, inputs, int(args[0]))), flush=True)
        elif command == "pss":
            print(json.dumps({"pss_bytes": pss_bytes(os.getpid())}), flush=True)
        else:
            break
    client.close()


def _example_inputs(repo: Path | None, model: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if model == "identity":
        return {"x": rng.random((1, IDENTITY_FEATURES), dtype=np.float32)}
    return {"raster": rng.random((1, 9, 128, 128), dtype=np.float32)}


def _run_for(handle: Any, inputs: dict[str, np.ndarray], seconds: float) -> dict[str, float]:
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        handle.infer(inputs)
        count += 1
    return {"samples": count, "elapsed_s": elapsed}


def _latencies(handle: Any, inputs: dict[str, np.ndarray], n: int) -> dict[str, float]:
    times = []
    for _ in range(n):
        start = time.perf_counter_ns()
        out = handle.infer(inputs)
        times.append(time.perf_counter_ns() - start)
        del out
    return {"median_us": statistics.median(times) / 1000}


# -- parent side ------------------------------------------------------------------------------


def pss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss line in /proc/{pid}/smaps_rollup")


class Worker:
    def __init__(self, mode: str, target: Path, model: str, threads: int) -> None:
        command = [sys.executable, __file__, "worker", mode, str(target), model, str(threads)]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if self._line() != "ready":
            raise RuntimeError(f"{mode} worker for {model} did not start")

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def answer(self) -> dict[str, float]:
        result: dict[str, float] = json.loads(self._line())
        return result

    def stop(self) -> None:
        self.send("quit")
        self.proc.wait(30)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@contextmanager
def workers(mode: str, target: Path, model: str, threads: int, n: int) -> Iterator[list[Worker]]:
    pool = [Worker(mode, target, model, threads) for _ in range(n)]
    try:
        yield pool
    finally:
        for w in pool:
            w.stop()


@contextmanager
def server(
    repo: Path, socket_path: Path, threads: int, instances: int
) -> Iterator[subprocess.Popen[str]]:
    command = [sys.executable, "-m", "fleetinfer.cli.serve", "--models", str(repo)]
    command += ["--socket", str(socket_path), "--metrics-port", "-1"]
    command += ["--intra-op-threads", str(threads), "--instances", str(instances)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    if not proc.stdout.readline():
        raise RuntimeError("the model server did not start")
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()


def samples_per_s(pool: list[Worker], seconds: float) -> float:
    for w in pool:
        w.send(f"run {seconds}")
    answers = [w.answer() for w in pool]
    return sum(a["samples"] / a["elapsed_s"] for a in answers)


def throughput(repo: Path, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"inprocess": [], "shared": []}
    sock = tmp / "t.sock"
    with (
        server(repo, sock, args.threads, args.workers),
        workers("shared", sock, "cdnet", args.threads, args.workers) as shared,
        workers("inprocess", repo, "cdnet", args.threads, args.workers) as local,
    ):
        for r in range(args.rounds):
            order = [("inprocess", local), ("shared", shared)]
            for name, pool in order if r % 2 == 0 else order[::-1]:
                runs[name].append(samples_per_s(pool, args.seconds))
    ratios = [s / i for s, i in zip(runs["shared"], runs["inprocess"], strict=True)]
    return {
        "model": "cdnet",
        "batch": 1,
        "workers": args.workers,
        "threads_per_execution": args.threads,
        "inprocess_samples_per_s": statistics.median(runs["inprocess"]),
        "shared_samples_per_s": statistics.median(runs["shared"]),
        "ratio_median": statistics.median(ratios),
        "target_ratio_min": TARGETS["throughput_ratio_min"],
        "rounds": runs,
    }


def overhead(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    from tests.helpers.tiny_models import identity_repository

    repo = identity_repository(tmp / "identity-repo", features=IDENTITY_FEATURES)
    sock = tmp / "o.sock"
    per_round: dict[str, list[float]] = {"inprocess": [], "shared": []}
    with (
        server(repo, sock, 1, 1),
        workers("shared", sock, "identity", 1, 1) as shared,
        workers("inprocess", repo, "identity", 1, 1) as local,
    ):
        for r in range(args.rounds):
            order = [("inprocess", local[0]), ("shared", shared[0])]
            for name, worker in order if r % 2 == 0 else order[::-1]:
                worker.send(f"lat {args.latency_requests}")
                per_round[name].append(worker.answer()["median_us"])
    diffs = [s - i for s, i in zip(per_round["shared"], per_round["inprocess"], strict=True)]
    return {
        "model": "identity",
        "input_bytes": IDENTITY_FEATURES * 4,
        "inprocess_median_us": statistics.median(per_round["inprocess"]),
        "shared_median_us": statistics.median(per_round["shared"]),
        "overhead_median_us": statistics.median(diffs),
        "target_overhead_us_max": TARGETS["overhead_us_max"],
        "rounds": per_round,
    }


def memory(repo: Path, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    n = args.memory_workers
    with workers("floor", repo, "cdnet", 1, n) as idle:
        floor = _total_pss(idle)
    with workers("inprocess", repo, "cdnet", 1, n) as local:
        inprocess = _total_pss(local)
    sock = tmp / "m.sock"
    with server(repo, sock, 1, 1) as proc, workers("shared", sock, "cdnet", 1, n) as shared:
        clients = _total_pss(shared)
        server_pss = pss_bytes(proc.pid)
    return {
        "workers": n,
        "inprocess_total_pss_mb": inprocess / 2**20,
        "shared_clients_total_pss_mb": clients / 2**20,
        "server_pss_mb": server_pss / 2**20,
        "ratio": clients / inprocess,
        "target_ratio_max": TARGETS["memory_ratio_max"],
        "floor_total_pss_mb": floor / 2**20,
        "floor_is": "the same workers with numpy and fleetinfer.client imported, no model",
        "ratio_above_floor": (clients - floor) / (inprocess - floor),
    }


def _total_pss(pool: list[Worker]) -> int:
    for w in pool:
        w.send("run 0.2")
    for w in pool:
        w.answer()
    return sum(pss_bytes(w.proc.pid) for w in pool)


def batching(repo: Path, args: argparse.Namespace) -> dict[str, Any]:
    from fleetinfer.server.repository import ModelRepository
    from fleetinfer.server.session import OrtModel

    model = OrtModel(ModelRepository(repo).resolve("cdnet"), intra_op_threads=1)
    rng = np.random.default_rng(0)
    rows = {}
    for batch in (2, 4, 8):
        x = rng.random((batch, 9, 128, 128), dtype=np.float32)
        timings = [_separate_and_merged(model, x) for _ in range(args.rounds)]
        rows[str(batch)] = {
            "separate_samples_per_s": batch / statistics.median(t[0] for t in timings),
            "merged_samples_per_s": batch / statistics.median(t[1] for t in timings),
        }
    return {"model": "cdnet", "threads": 1, "by_batch": rows}


def _separate_and_merged(model: Any, x: np.ndarray) -> tuple[float, float]:
    """Seconds for len(x) batch-1 runs, then for one run of the whole batch."""
    start = time.perf_counter()
    for i in range(len(x)):
        model.run({"raster": x[i : i + 1]})
    middle = time.perf_counter()
    model.run({"raster": x})
    return middle - start, time.perf_counter() - middle


def triton_row() -> dict[str, Any]:
    python = Path("/usr/bin/python3.11")
    probe = (
        subprocess.run(
            [str(python), "-c", "import pytriton"], capture_output=True, text=True, check=False
        )
        if python.exists()
        else None
    )
    if probe is None or probe.returncode != 0:
        return {
            "ran": False,
            "why": (
                "PyTriton (nvidia-pytriton) is not installed for /usr/bin/python3.11: it ships the "
                "Triton server binaries in its wheel and runs only under that interpreter in its "
                "own venv; not set up in this session (time), so no Triton number is claimed"
            ),
        }
    return {
        "ran": False,
        "why": "PyTriton is importable, but the Triton comparison is not written yet",
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per round and variant")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="ORT threads per execution")
    parser.add_argument("--latency-requests", type=int, default=300)
    parser.add_argument("--memory-workers", type=int, default=8)
    parser.add_argument(
        "--only", nargs="*", default=["throughput", "overhead", "memory", "batching"]
    )
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    from tests.helpers.tiny_models import cdnet_repository

    tmp = Path(tempfile.mkdtemp(prefix="fi-bench-"))
    try:
        repo = cdnet_repository(tmp / "cdnet-repo")
        result: dict[str, Any] = {"machine": machine(), "cdnet_repository": str(repo)}
        steps = {
            "throughput": lambda: throughput(repo, tmp, args),
            "overhead": lambda: overhead(tmp, args),
            "memory": lambda: memory(repo, tmp, args),
            "batching": lambda: batching(repo, args),
        }
        for name in args.only:
            result[name] = steps[name]()
            print(f"{name}: done", file=sys.stderr)
        result["triton"] = triton_row()
        result["machine"]["loadavg_1m_at_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker_main(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
