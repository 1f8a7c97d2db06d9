"""Shared model server vs in-process ONNX Runtime: throughput, per-request overhead, memory.

Rows (one JSON object on stdout, or in --json):

- `throughput`: CDNet at batch 1, W worker processes each with T ONNX Runtime threads in process,
  against W client processes of one server running W concurrent executions of T threads (the same
  total threads). Variants interleaved (A B A B ...) over the rounds; medians and their ratio.
  The shared clients run twice: inputs as plain numpy arrays (copied into shared memory per
  call) and written in place into `handle.empty()` arrays, as a fleetinfer task would. A third
  variant, `relay`, is the bound of any design that hands each call to another process: a relay
  server runs the same model on a fixed input in one thread per connection each time its client
  sends one byte, and answers with one byte (no framing, validation or shared memory: only the two
  wake-ups of a call and a minimal Python loop on each end). A fifth, `shared_queued`, runs
  `--queued-clients` clients (inputs in place) on the same W executions: more clients than
  executions, as in a node whose workers outnumber its cores, so requests queue. In-place runs
  right after in process (before it in the reversed rounds), as the host drifts within a round;
  its per-round quartiles and its ratio to the relay are reported too. Where the compiled
  request paths are built, a sixth, `shared_in_place_python`, runs a second server and its
  clients with `FLEETINFER_NATIVE=0` (the same code, all Python), inputs in place: what the C
  paths buy.
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
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers builds the identity model and the CDNet stand-in

IDENTITY_FEATURES = 512 * 1024  # 2 MiB of float32
TARGETS = {"throughput_ratio_min": 0.97, "overhead_us_max": 150.0, "memory_ratio_max": 0.25}


# -- the PyTriton side (runs under the pytriton venv's python, not ours) --------------------------

TRITON_WORKER = """
import json, sys, time, numpy as np
from pytriton.client import ModelClient
x = np.random.default_rng(0).random((1, 9, 128, 128), dtype=np.float32)
with ModelClient(f"localhost:{sys.argv[1]}", "cdnet", init_timeout_s=120) as client:
    client.infer_batch(raster=x)
    print("ready", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command != "run":
            break
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < float(args[0]):
            client.infer_batch(raster=x)
            count += 1
        print(json.dumps({"samples": count, "elapsed_s": elapsed}), flush=True)
"""


# -- worker side: `server_bench.py worker MODE TARGET MODEL THREADS` -----------------------------


def worker_main(mode: str, target: str, model: str, threads: int) -> None:
    """A benchmark worker: reads commands on stdin, answers one line each on stdout."""
    serve_commands(mode, target, model, threads, sys.stdin, sys.stdout)


def serve_commands(
    mode: str, target: str, model: str, threads: int, commands: TextIO, answers: TextIO
) -> None:
    from fleetinfer.client import ModelClient

    def say(answer: object) -> None:
        answers.write((answer if isinstance(answer, str) else json.dumps(answer)) + "\n")
        answers.flush()

    if mode == "floor":  # what any worker costs before it touches a model
        say("ready")
        for line in commands:
            if line.startswith("pss"):
                say({"pss_bytes": pss_bytes(os.getpid())})
            elif not line.startswith("run"):
                return
            else:
                say({"samples": 0, "elapsed_s": 1.0})
        return
    if mode == "relay":
        relay = Relay(target)
        say("ready")
        for line in commands:
            if not line.startswith("run"):
                break
            say(_run_for(relay, {}, float(line.split()[1])))
        relay.close()
        return
    if mode == "shared":
        client = ModelClient.from_mode("shared", socket_path=target)
    else:
        client = ModelClient.from_mode("inprocess", repository=target, intra_op_threads=threads)
    handle = client.model(model)
    inputs = _example_inputs(Path(target) if mode == "inprocess" else None, model)
    handle.infer(inputs)  # load and warm up
    say("ready")
    for line in commands:
        command, *args = line.split()
        chosen = inputs if args[1:] != ["inplace"] else _in_place(client, inputs)
        if command == "run":
            say(_run_for(handle, chosen, float(args[0])))
        elif command == "lat":
            say(_latencies(handle, chosen, int(args[0])))
        elif command == "pss":
            say({"pss_bytes": pss_bytes(os.getpid())})
        else:
            break
    client.close()


class Relay:
    """The client end of the handoff bound: one byte out, one byte back."""

    def __init__(self, socket_path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(socket_path)

    def infer(self, inputs: dict[str, np.ndarray]) -> None:
        self.sock.sendall(b"q")
        if not self.sock.recv(1):
            raise RuntimeError("the relay server closed the connection")

    def close(self) -> None:
        self.sock.close()


def relay_main(repo: str, socket_path: str) -> None:
    """`server_bench.py relay REPO SOCKET`: the server end of the handoff bound. One ONNX Runtime
    session of CDNet with one thread per execution, as the model server's; each connection's
    thread runs it on a fixed batch-1 input whenever its client sends a byte."""
    from fleetinfer.server.repository import ModelRepository
    from fleetinfer.server.session import OrtModel

    model = OrtModel(ModelRepository(repo).resolve("cdnet"), intra_op_threads=1)
    inputs = _example_inputs(Path(repo), "cdnet")
    model.run(inputs)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen()
    print("ready", flush=True)

    def serve(conn: socket.socket) -> None:
        with conn:
            while conn.recv(1):
                model.run(inputs)
                conn.sendall(b"r")

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def zygote_main(mode: str, target: str, model: str, threads: int) -> None:
    """`server_bench.py zygote ...`: import what a worker of `mode` imports, once, then fork one
    worker per `fork IN OUT` line (two FIFOs), as `fleetinfer run` forks a node's
    workers from its zygote; answers each with the child's pid."""
    import gc

    import numpy.random  # noqa: F401  (what the worker's own code uses: `_example_inputs`)

    import fleetinfer.client  # noqa: F401

    if mode == "inprocess":
        import onnxruntime  # noqa: F401
    gc.freeze()
    print("ready", flush=True)
    for line in sys.stdin:
        _, fifo_in, fifo_out = line.split()
        pid = os.fork()
        if pid == 0:
            with open(fifo_in) as commands, open(fifo_out, "w") as answers:
                serve_commands(mode, target, model, threads, commands, answers)
            os._exit(0)
        print(pid, flush=True)


def _example_inputs(repo: Path | None, model: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if model == "identity":
        return {"x": rng.random((1, IDENTITY_FEATURES), dtype=np.float32)}
    if model == "affine":
        return {"x": rng.random((1, 4), dtype=np.float32)}
    return {"raster": rng.random((1, 9, 128, 128), dtype=np.float32)}


def _in_place(client: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same inputs in arrays from `client.empty`: in the shared region for a shared client
    (the server reads them without a copy), plain arrays in process."""
    placed = {}
    for name, array in inputs.items():
        placed[name] = client.empty(array.shape, array.dtype)
        placed[name][...] = array
    return placed


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


def _environment(added: dict[str, str] | None) -> dict[str, str] | None:
    """A child's environment: ours, with `added` (None: ours as it is)."""
    return None if added is None else {**os.environ, **added}


class Worker:
    def __init__(
        self, mode: str, target: Path, model: str, threads: int, env: dict[str, str] | None = None
    ) -> None:
        command = [sys.executable, __file__, "worker", mode, str(target), model, str(threads)]
        self.start(command, f"{mode} worker for {model}", env)

    def start(self, command: list[str], what: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_environment(env),
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.pid, self.commands, self.answers = self.proc.pid, self.proc.stdin, self.proc.stdout
        if self._line() != "ready":
            raise RuntimeError(f"{what} did not start")

    def send(self, command: str) -> None:
        self.commands.write(command + "\n")
        self.commands.flush()

    def _line(self) -> str:
        return self.answers.readline().strip()

    def answer(self) -> dict[str, float]:
        result: dict[str, float] = json.loads(self._line())
        return result

    def stop(self) -> None:
        self.send("quit")
        self.proc.wait(30)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


class ForkedWorker(Worker):
    """A worker forked by a bench zygote; commands and answers travel through two FIFOs."""

    def __init__(self, zygote: subprocess.Popen[str], folder: Path) -> None:
        fifo_in, fifo_out = folder / "in", folder / "out"
        os.mkfifo(fifo_in)
        os.mkfifo(fifo_out)
        assert zygote.stdin is not None
        assert zygote.stdout is not None
        zygote.stdin.write(f"fork {fifo_in} {fifo_out}\n")
        zygote.stdin.flush()
        self.pid = int(zygote.stdout.readline())
        self.commands, self.answers = open(fifo_in, "w"), open(fifo_out)  # noqa: SIM115
        if self._line() != "ready":
            raise RuntimeError("a forked worker did not start")

    def stop(self) -> None:
        self.send("quit")
        self.commands.close()
        self.answers.read()  # until the child closes its end: it has exited
        self.answers.close()


class Pool(list[Worker]):
    """Workers, and the zygote they were forked from (None for fresh interpreters)."""

    zygote_pid: int | None = None


@contextmanager
def workers(
    mode: str,
    target: Path,
    model: str,
    threads: int,
    n: int,
    *,
    forked_in: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Pool]:
    """`n` workers, fresh interpreters (with `env` added to their environment); or, given
    `forked_in` (a scratch folder), forked from a zygote that imported their modules once (the
    zygote's own PSS is the pool's too)."""
    pool = Pool()
    if forked_in is None:
        pool.extend(Worker(mode, target, model, threads, env) for _ in range(n))
        try:
            yield pool
        finally:
            for w in pool:
                w.stop()
        return
    command = [sys.executable, __file__, "zygote", mode, str(target), model, str(threads)]
    zygote = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert zygote.stdin is not None
    assert zygote.stdout is not None
    pool.zygote_pid = zygote.pid
    try:
        if zygote.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {mode} zygote did not start")
        for i in range(n):
            (forked_in / f"{mode}-{i}").mkdir(parents=True)
            pool.append(ForkedWorker(zygote, forked_in / f"{mode}-{i}"))
        yield pool
    finally:
        for w in pool:
            w.stop()
        zygote.stdin.close()
        zygote.wait(30)
        zygote.stdout.close()


@contextmanager
def server(
    repo: Path, socket_path: Path, threads: int, instances: int, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    command = [sys.executable, "-m", "fleetinfer.cli.serve", "--models", str(repo)]
    command += ["--socket", str(socket_path), "--metrics-port", "-1"]
    command += ["--intra-op-threads", str(threads), "--instances", str(instances)]
    with _started(command, "the model server", env) as proc:
        yield proc


@contextmanager
def relay_server(repo: Path, socket_path: Path) -> Iterator[subprocess.Popen[str]]:
    with _started([sys.executable, __file__, "relay", str(repo), str(socket_path)], "relay") as p:
        yield p


@contextmanager
def _started(
    command: list[str], what: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """A server process, once it has printed its first line (it serves from then on)."""
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_environment(env),
    )
    assert proc.stdout is not None
    if not proc.stdout.readline():
        proc.wait(30)
        raise RuntimeError(f"{what} did not start")
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()


class Round(NamedTuple):
    """One variant's run in one round: its samples/s and the CPU each call cost its clients and
    its server (0 where it has none, or none of ours)."""

    samples_per_s: float
    client_us: float
    server_us: float


def measured(
    pool: list[Worker], seconds: float, *, in_place: bool = False, server_pid: int | None = None
) -> Round:
    from fleetinfer.bench.measure import process_on_cpu_ns

    def cpu_ns() -> tuple[int, int]:
        clients = sum(process_on_cpu_ns(w.pid) for w in pool)
        return clients, process_on_cpu_ns(server_pid) if server_pid else 0

    before = cpu_ns()
    for w in pool:
        w.send(f"run {seconds}" + (" inplace" if in_place else ""))
    answers = [w.answer() for w in pool]
    client_ns, server_ns = (after - start for after, start in zip(cpu_ns(), before, strict=True))
    calls = max(1, sum(int(a["samples"]) for a in answers))  # batch 1: a sample is a call
    rate = sum(a["samples"] / a["elapsed_s"] for a in answers)
    return Round(rate, client_ns / calls / 1000, server_ns / calls / 1000)


def throughput(repo: Path, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    from fleetinfer.server.native import NATIVE_ENV, native_available

    runs: dict[str, list[Round]] = {"inprocess": [], "shared": [], "shared_in_place": []}
    runs["relay"], runs["shared_queued"] = [], []
    native = native_available()
    sock, relay_sock, python_sock = tmp / "t.sock", tmp / "relay.sock", tmp / "python.sock"
    python_env = {NATIVE_ENV: "0"}  # a server and clients with no compiled path
    with (
        server(repo, sock, args.threads, args.workers) as main_server,
        workers("shared", sock, "cdnet", args.threads, args.workers) as shared,
        server(repo, python_sock, args.threads, args.workers, python_env)
        if native
        else contextlib.nullcontext() as python_server,
        workers(
            "shared",
            python_sock,
            "cdnet",
            args.threads,
            args.workers if native else 0,
            env=python_env,
        ) as python,
        workers("shared", sock, "cdnet", args.threads, args.queued_clients) as queued,
        workers("inprocess", repo, "cdnet", args.threads, args.workers) as local,
        relay_server(repo, relay_sock) as relay_proc,
        workers("relay", relay_sock, "cdnet", 1, args.workers) as relay,
        triton_pool(repo, tmp, args) as triton,
    ):
        # the headline variant next to its baseline both ways round: the host drifts within a round
        ours = main_server.pid
        order = [("inprocess", local, None), ("shared_in_place", shared, ours)]
        order += [("shared", shared, ours), ("relay", relay, relay_proc.pid)]
        order.append(("shared_queued", queued, ours))
        if python_server is not None:  # what the C paths buy: the same code, all Python
            order.insert(2, ("shared_in_place_python", python, python_server.pid))
            runs["shared_in_place_python"] = []
        if triton:
            order.append(("triton", triton, None))
            runs["triton"] = []
        for r in range(args.rounds):
            for name, pool, pid in order if r % 2 == 0 else order[::-1]:
                in_place = name in ("shared_in_place", "shared_in_place_python", "shared_queued")
                runs[name].append(measured(pool, args.seconds, in_place=in_place, server_pid=pid))
    return _throughput_report(runs, args)


def _throughput_report(runs: dict[str, list[Round]], args: argparse.Namespace) -> dict[str, Any]:
    rates = {name: [r.samples_per_s for r in rounds] for name, rounds in runs.items()}
    in_place = _paired_ratios(rates["shared_in_place"], rates["inprocess"])
    args.triton_runs = rates.get("triton"), rates["inprocess"]
    return {
        "model": "cdnet",
        "batch": 1,
        "workers": args.workers,
        "threads_per_execution": args.threads,
        "inprocess_samples_per_s": statistics.median(rates["inprocess"]),
        "shared_samples_per_s": statistics.median(rates["shared"]),
        "ratio_median": _median_ratio(rates, "shared", "inprocess"),
        "shared_in_place_samples_per_s": statistics.median(rates["shared_in_place"]),
        "ratio_in_place_median": statistics.median(in_place),
        "ratio_in_place_quartiles": statistics.quantiles(in_place, n=4)
        if len(in_place) > 1
        else [],
        "ratio_in_place_to_relay_median": _median_ratio(rates, "shared_in_place", "relay"),
        "native_paths": "shared_in_place_python" in rates,
        **_python_paths(rates),
        "queued_clients": args.queued_clients,
        "shared_queued_samples_per_s": statistics.median(rates["shared_queued"]),
        "ratio_queued_median": _median_ratio(rates, "shared_queued", "inprocess"),
        "relay_samples_per_s": statistics.median(rates["relay"]),
        "ratio_relay_median": _median_ratio(rates, "relay", "inprocess"),
        "relay_is": "the bound of any design that hands each call to another process: the model "
        "run by one thread per connection on a fixed input when its client sends one byte, one "
        "byte back; no framing, validation or shared memory",
        "target_ratio_min": TARGETS["throughput_ratio_min"],
        "cpu_us_per_call": _cpu_per_call(runs),
        "rounds": rates,
    }


def _python_paths(rates: dict[str, list[float]]) -> dict[str, Any]:
    """In place through a server and clients that run no compiled path (`FLEETINFER_NATIVE=0`),
    where the C paths are built: to in process, and the C paths to it (what they buy)."""
    if "shared_in_place_python" not in rates:
        return {"python_paths_not_run": "the C paths are not built (or are off): all is Python"}
    return {
        "ratio_in_place_python_median": _median_ratio(rates, "shared_in_place_python", "inprocess"),
        "ratio_native_to_python_median": _median_ratio(
            rates, "shared_in_place", "shared_in_place_python"
        ),
    }


def _cpu_per_call(runs: dict[str, list[Round]]) -> dict[str, Any]:
    """Median CPU per call of each variant (its clients, its server; on-CPU time of all their
    threads around each round), and of the whole to in process's, paired by round: on saturated
    cores, a variant that spends more CPU per call than in process cannot keep up with it."""
    baseline = [r.client_us for r in runs["inprocess"]]
    report: dict[str, Any] = {}
    for name, rounds in runs.items():
        if name == "triton":  # its server and clients are not ours to account
            continue
        totals = [r.client_us + r.server_us for r in rounds]
        report[name] = {
            "clients": statistics.median(r.client_us for r in rounds),
            "server": statistics.median(r.server_us for r in rounds),
            "total": statistics.median(totals),
            "ratio_to_inprocess": statistics.median(_paired_ratios(totals, baseline)),
        }
    return report


def _median_ratio(rates: dict[str, list[float]], variant: str, baseline: str) -> float:
    return statistics.median(_paired_ratios(rates[variant], rates[baseline]))


def _paired_ratios(variant: list[float], baseline: list[float]) -> list[float]:
    """Each round's ratio: the rounds share the machine's state at the time."""
    return [v / b for v, b in zip(variant, baseline, strict=True)]


def overhead(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Per-request overhead with a 2 MiB identity (the target) and a 16-byte affine model (the
    fixed cost of a round trip, without the memory traffic of large tensors). The identity runs
    twice: its input written by the caller into `client.empty()` (in place: the server reads it
    where it lies) and as a plain numpy array (copied into shared memory on every call)."""
    from tests.helpers.tiny_models import affine_repository, identity_repository

    repo = identity_repository(tmp / "overhead-repo", features=IDENTITY_FEATURES)
    affine_repository(repo)
    result = _overhead(repo, tmp, args, "identity", in_place=True)
    result["input_copied"] = _overhead(repo, tmp, args, "identity", in_place=False)
    result["fixed_cost_16_bytes"] = _overhead(repo, tmp, args, "affine", in_place=False)
    return result


def _overhead(
    repo: Path, tmp: Path, args: argparse.Namespace, model: str, *, in_place: bool
) -> dict[str, Any]:
    sock = tmp / f"o-{model}-{in_place}.sock"
    per_round: dict[str, list[float]] = {"inprocess": [], "shared": []}
    command = f"lat {args.latency_requests}" + (" inplace" if in_place else "")
    with (
        server(repo, sock, 1, 1),
        workers("shared", sock, model, 1, 1) as shared,
        workers("inprocess", repo, model, 1, 1) as local,
    ):
        for r in range(args.rounds):
            order = [("inprocess", local[0]), ("shared", shared[0])]
            for name, worker in order if r % 2 == 0 else order[::-1]:
                worker.send(command)
                per_round[name].append(worker.answer()["median_us"])
    diffs = [s - i for s, i in zip(per_round["shared"], per_round["inprocess"], strict=True)]
    return {
        "model": model,
        "input_bytes": IDENTITY_FEATURES * 4 if model == "identity" else 16,
        "input": "in place (client.empty)" if in_place else "copied into shared memory",
        "inprocess_median_us": statistics.median(per_round["inprocess"]),
        "shared_median_us": statistics.median(per_round["shared"]),
        "overhead_median_us": statistics.median(diffs),
        "target_overhead_us_max": TARGETS["overhead_us_max"],
        "rounds": per_round,
    }


def memory(repo: Path, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """8 workers that have each run CDNet; then the same with the shipped `cdnet-l` (same
    weights' size, 15.5x the FLOPs and larger activations), to show where the floor sits."""
    from roadchange.pipeline import shipped_model_repository

    result = _memory(repo, tmp, args, "cdnet")
    heavy = shipped_model_repository()
    if (heavy / "cdnet-l" / "config.toml").is_file():
        result["cdnet_l"] = _memory(heavy, tmp, args, "cdnet-l")
    return result


def _memory(repo: Path, tmp: Path, args: argparse.Namespace, model: str) -> dict[str, Any]:
    n = args.memory_workers
    with workers("floor", repo, model, 1, n) as idle:
        floor = _total_pss(idle)
    with workers("inprocess", repo, model, 1, n) as local:
        inprocess = _total_pss(local)
    sock = tmp / f"m-{model}.sock"
    with server(repo, sock, 1, 1) as proc:
        with workers("shared", sock, model, 1, n) as shared:
            clients = _total_pss(shared)
        forked = _forked_memory(repo, sock, tmp / f"zygotes-{model}", model, n)
        server_pss = pss_bytes(proc.pid)
    return {
        "model": model,
        "workers": n,
        "inprocess_total_pss_mb": inprocess / 2**20,
        "shared_clients_total_pss_mb": clients / 2**20,
        "server_pss_mb": server_pss / 2**20,
        "ratio": clients / inprocess,
        "target_ratio_max": TARGETS["memory_ratio_max"],
        "floor_total_pss_mb": floor / 2**20,
        "floor_is": "the same workers with numpy and fleetinfer.client imported, no model",
        "ratio_above_floor": (clients - floor) / (inprocess - floor),
        "forked": forked,
    }


def _forked_memory(repo: Path, sock: Path, folder: Path, model: str, n: int) -> dict[str, Any]:
    """The same, each mode's workers forked from a zygote that imported what they import (as
    `fleetinfer run` starts a node's workers by default); each worker still loads its own model
    (in process) or connects on its own (shared) after the fork. Totals include the zygote."""
    with workers("inprocess", repo, model, 1, n, forked_in=folder) as local:
        inprocess = _total_pss(local)
    with workers("shared", sock, model, 1, n, forked_in=folder) as shared:
        clients = _total_pss(shared)
    return {
        "inprocess_total_pss_mb": inprocess / 2**20,
        "shared_clients_total_pss_mb": clients / 2**20,
        "ratio": clients / inprocess,
        "target_ratio_max": TARGETS["memory_ratio_max"],
    }


def _total_pss(pool: Pool) -> int:
    """All the workers' PSS after each has run the model, with their zygote's if they have one."""
    for w in pool:
        w.send("run 0.2")
    for w in pool:
        w.answer()
    zygote = [] if pool.zygote_pid is None else [pool.zygote_pid]
    return sum(pss_bytes(pid) for pid in [*(w.pid for w in pool), *zygote])


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


def pytriton_python(args: argparse.Namespace) -> str | None:
    """Why PyTriton cannot run, or None when `--pytriton-python` can import it."""
    python = args.pytriton_python
    if python is None:
        return (
            "no --pytriton-python given: PyTriton runs only under Debian's /usr/bin/python3.11 in "
            "its own venv (python3.11 -m venv V && V/bin/pip install nvidia-pytriton onnxruntime "
            "numpy), then pass --pytriton-python V/bin/python"
        )
    probe = subprocess.run(
        [python, "-c", "import pytriton, onnxruntime, numpy"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"{python} cannot import pytriton/onnxruntime/numpy: {probe.stderr.strip()[-300:]}"
    return None


@contextmanager
def triton_pool(repo: Path, tmp: Path, args: argparse.Namespace) -> Iterator[list[Worker]]:
    """PyTriton serving the same CDNet file with W instances of 1 thread (the server `fleetinfer
    bench` starts for its triton mode), and W clients."""
    if pytriton_python(args) is not None:
        yield []
        return
    from fleetinfer.bench.triton import TritonServer

    (tmp / "triton_worker.py").write_text(TRITON_WORKER)
    pool: list[Worker] = []
    with TritonServer(Path(args.pytriton_python), repo, threads=1, instances=args.workers) as srv:
        try:
            for _ in range(args.workers):
                worker = Worker.__new__(Worker)
                command = [args.pytriton_python, str(tmp / "triton_worker.py"), str(srv.http_port)]
                worker.start(command, "triton client")
                pool.append(worker)
            yield pool
        finally:
            for worker in pool:
                worker.stop()


def triton_row(args: argparse.Namespace) -> dict[str, Any]:
    why = pytriton_python(args)
    if why is not None:
        return {"ran": False, "why": why}
    triton, inprocess = getattr(args, "triton_runs", (None, None))
    if not triton:
        return {"ran": False, "why": "the throughput row was not run (--only without throughput)"}
    return {
        "ran": True,
        "what": "PyTriton (Triton + Python backend running the same ONNX file with ONNX Runtime, "
        "W instances of 1 thread: fleetinfer.bench.triton_server, as `fleetinfer bench` runs "
        "it), W pytriton.client processes over HTTP, batch 1, interleaved with the throughput "
        "row's rounds",
        "triton_samples_per_s": statistics.median(triton),
        "ratio_to_inprocess": statistics.median(_paired_ratios(triton, inprocess)),
        "rounds": triton,
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
    parser.add_argument(
        "--queued-clients", type=int, default=4, help="clients of the shared_queued variant"
    )
    parser.add_argument("--latency-requests", type=int, default=300)
    parser.add_argument("--memory-workers", type=int, default=8)
    parser.add_argument(
        "--only", nargs="*", default=["throughput", "overhead", "memory", "batching"]
    )
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument(
        "--pytriton-python",
        default=os.environ.get("FLEETINFER_PYTRITON_PYTHON"),
        help="python of a venv with nvidia-pytriton, onnxruntime and numpy (adds the Triton row)",
    )
    args = parser.parse_args()
    if args.pytriton_python:  # absolute (the server starts in a scratch folder), not resolved:
        args.pytriton_python = os.path.abspath(args.pytriton_python)  # the venv's link is the venv
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
        result["triton"] = triton_row(args)
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
    elif len(sys.argv) > 1 and sys.argv[1] == "relay":
        relay_main(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "zygote":
        zygote_main(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
