"""Queue throughput: full cycle (send + receive + ack) tasks/s per backend, as one JSON object.

One producer process sends task envelopes in batches while N consumer processes receive batches
and ack them with `ack_batch`; the clock runs from the moment every process is ready until the
last ack. Backends are interleaved (sqlite, redis, sqlite, redis, ...) over several rounds and the
median is reported, because the machine is shared and noisy.

    .venv/bin/python benchmarks/queue_bench.py                       # defaults below
    .venv/bin/python benchmarks/queue_bench.py --rounds 5 --backends sqlite
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Event

from fleetinfer.queue import open_broker

TARGETS_TASKS_PER_S = {"sqlite": 2000.0, "redis": 5000.0}


@dataclass(frozen=True)
class Params:
    rounds: int
    consumers: int
    receive_batch: int
    send_batch: int
    tasks: dict[str, int]
    redis_url: str
    sqlite_dir: str


def _envelope(n: int) -> dict[str, object]:
    return {"task": "roadchange.detect", "id": f"seg-{n:08d}", "args": {"segment": n, "drives": 4}}


def _produce(url: str, tasks: int, batch: int, ready: Event, go: Event) -> None:
    with open_broker(url) as broker:
        ready.set()
        go.wait()
        for start in range(0, tasks, batch):
            broker.send_batch([_envelope(n) for n in range(start, min(tasks, start + batch))])


def _consume(
    url: str,
    batch: int,
    tasks: int,
    done: multiprocessing.Value,
    ready: Event,
    go: Event,
    out: multiprocessing.Queue,
) -> None:  # type: ignore[type-arg]
    with open_broker(url, visibility_timeout_s=60) as broker:
        ready.set()
        go.wait()
        acked = 0
        while True:
            with done.get_lock():
                if done.value >= tasks:
                    break
            messages = broker.receive(max_messages=batch, wait_s=0.05)
            if not messages:
                continue
            broker.ack_batch([m.receipt for m in messages])
            acked += len(messages)
            with done.get_lock():
                done.value += len(messages)
        out.put((acked, time.time()))


def run_once(url: str, tasks: int, params: Params) -> float:
    """One full cycle of `tasks` tasks; returns tasks per second."""
    ctx = multiprocessing.get_context("spawn")
    go, done, out = ctx.Event(), ctx.Value("q", 0), ctx.Queue()
    readies = [ctx.Event() for _ in range(params.consumers + 1)]
    procs = [ctx.Process(target=_produce, args=(url, tasks, params.send_batch, readies[0], go))]
    procs += [
        ctx.Process(
            target=_consume,
            args=(url, params.receive_batch, tasks, done, readies[i + 1], go, out),
        )
        for i in range(params.consumers)
    ]
    for proc in procs:
        proc.start()
    for ready in readies:
        if not ready.wait(120):
            raise RuntimeError("a benchmark process did not start within 120 s")
    started = time.time()
    go.set()
    reports = [out.get(timeout=600) for _ in range(params.consumers)]
    for proc in procs:
        proc.join(60)
    acked = sum(count for count, _ in reports)
    if acked != tasks:
        raise RuntimeError(f"expected {tasks} acks, got {acked}: the queue lost or duplicated")
    return tasks / (max(at for _, at in reports) - started)


def _url(backend: str, params: Params) -> str:
    name = f"bench{uuid.uuid4().hex[:10]}"
    if backend == "sqlite":
        return f"sqlite:///{params.sqlite_dir}/queue.db?queue={name}"
    return f"{params.redis_url}?queue={name}"


def _parse() -> tuple[Params, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backends", nargs="+", default=["sqlite", "redis"], choices=["sqlite", "redis"]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--receive-batch", type=int, default=50)
    parser.add_argument("--send-batch", type=int, default=100)
    parser.add_argument("--sqlite-tasks", type=int, default=20000)
    parser.add_argument("--redis-tasks", type=int, default=40000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--sqlite-dir", default="")
    args = parser.parse_args()
    params = Params(
        rounds=args.rounds,
        consumers=args.consumers,
        receive_batch=args.receive_batch,
        send_batch=args.send_batch,
        tasks={"sqlite": args.sqlite_tasks, "redis": args.redis_tasks},
        redis_url=args.redis_url,
        sqlite_dir=args.sqlite_dir or tempfile.mkdtemp(prefix="fleetinfer-queue-bench-"),
    )
    return params, args.backends


def main() -> int:
    params, backends = _parse()
    rates: dict[str, list[float]] = {b: [] for b in backends}
    for _ in range(params.rounds):
        for backend in backends:  # interleaved: A B A B ...
            url = _url(backend, params)
            rates[backend].append(run_once(url, params.tasks[backend], params))
            with open_broker(url) as broker:
                broker.purge()
    results = {
        b: {
            "tasks_per_s_by_round": [round(r, 1) for r in rates[b]],
            "median_tasks_per_s": round(statistics.median(rates[b]), 1),
            "target_tasks_per_s": TARGETS_TASKS_PER_S[b],
            "meets_target": statistics.median(rates[b]) >= TARGETS_TASKS_PER_S[b],
        }
        for b in backends
    }
    machine = {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "python": sys.version.split()[0],
    }
    print(
        json.dumps(
            {
                "benchmark": "queue_full_cycle",
                "machine": machine,
                "parameters": asdict(params),
                "results": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
