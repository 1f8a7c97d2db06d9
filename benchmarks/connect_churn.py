"""Connect/disconnect churn: does the model server's memory grow with connections it has closed?

Each cycle is what a short-lived worker does: connect a `shared` client (socket + a fresh shared
memory region, attached), send the same small request three times (so that the server keeps it
in its fast lane: the C `ServerLane` or its Python twin), close. `--parallel N` runs N such
clients at once (each cycle still one connection), as many workers of a node starting or
stopping together do. After every `--step` cycles, once the server's connection threads have
ended, its RSS and PSS are read from `/proc/<pid>/smaps_rollup`, with its number of glibc
malloc heaps (one per arena beyond the main one, 64 MiB reserved each: a thread that finds every
arena busy makes a new one, up to 8 per core).

Variants, each against a fresh server process: the C paths (default build), the Python paths
(`FLEETINFER_NATIVE=0`), and any given by `--variant NAME=VAR=VALUE,...`: for example
`arenas2=MALLOC_ARENA_MAX=2` (few arenas: does the growth go away? then it is the allocator) or
`arenas128=MALLOC_ARENA_MAX=128` (as many arenas as a 16-core host allows).

`--rounds R` runs the variants R times, interleaved (A B A B ...): the machine is shared and
noisy, so each variant's growth is reported per round and as the median of its rounds.

Prints one JSON object: per variant and round the samples, the growth from the sample at
`--baseline` cycles to the end and that growth per cycle; per variant the median growth.

    .venv/bin/python benchmarks/connect_churn.py --cycles 3000 --step 300 --parallel 100 \
        --variant arenas2=MALLOC_ARENA_MAX=2 --variant arenas128=MALLOC_ARENA_MAX=128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers builds the affine model


def smaps_rollup(pid: int) -> dict[str, int]:
    """Rss and Pss of a process, bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key.lower() + "_bytes"] = int(rest.split()[0]) * 1024
    return values


def malloc_heaps(pid: int) -> int:
    """glibc's non-main arena heaps: 64 MiB-aligned anonymous reservations of 64 MiB."""
    regions = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) == 5:  # anonymous
            start, end = (int(x, 16) for x in fields[0].split("-"))
            regions.append((start, end))
    heap = 64 * 2**20
    starts = {start for start, _ in regions if start % heap == 0}
    ends = {end for _, end in regions}
    return sum(1 for start in starts if start + heap in ends)


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@contextmanager
def model_server(repo: Path, socket_path: Path, env: dict[str, str]) -> Iterator[int]:
    command = [sys.executable, "-m", "fleetinfer.cli.serve", "--models", str(repo)]
    command += ["--socket", str(socket_path), "--metrics-port", "-1", "--instances", "1"]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, **env},
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        if not proc.stdout.readline():
            raise RuntimeError("the model server did not start")
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()


def one_cycle(socket_path: Path, x: np.ndarray) -> None:
    from fleetinfer.client import ModelClient

    client = ModelClient.from_mode("shared", socket_path=socket_path)
    try:
        handle = client.model("affine")
        for _ in range(3):
            handle.infer({"x": x})
    finally:
        client.close()


def settle(pid: int, connections_gone_s: float = 5.0) -> None:
    """Wait until the server's connection threads have ended (up to `connections_gone_s`)."""
    deadline = time.monotonic() + connections_gone_s
    base = None
    while time.monotonic() < deadline:
        count = thread_count(pid)
        if base is not None and count == base:
            return
        base = count
        time.sleep(0.05)


def cycles(socket_path: Path, x: np.ndarray, count: int, parallel: int) -> None:
    """`count` cycles, `parallel` clients at a time."""
    left = count
    while left > 0:
        group = [
            threading.Thread(target=one_cycle, args=(socket_path, x))
            for _ in range(min(parallel, left))
        ]
        for thread in group:
            thread.start()
        for thread in group:
            thread.join()
        left -= len(group)


def churn(repo: Path, tmp: Path, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    socket_path = tmp / f"churn-{time.monotonic_ns()}.sock"
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    samples = []
    with model_server(repo, socket_path, env) as pid:
        one_cycle(socket_path, x)
        done = 0
        while done < args.cycles:
            cycles(socket_path, x, args.step, args.parallel)
            done += args.step
            settle(pid)
            sample = {"cycles": done, "threads": thread_count(pid), "heaps": malloc_heaps(pid)}
            samples.append(sample | smaps_rollup(pid))
    return _report(samples, args.baseline)


def _report(samples: list[dict[str, int]], baseline: int) -> dict[str, Any]:
    first = next(s for s in samples if s["cycles"] >= baseline)
    last = samples[-1]
    cycles = max(last["cycles"] - first["cycles"], 1)
    report: dict[str, Any] = {"samples": samples}
    for key in ("rss_bytes", "pss_bytes"):
        growth = last[key] - first[key]
        report[f"{key.removesuffix('_bytes')}_growth_after_{baseline}_mb"] = round(
            growth / 2**20, 2
        )
        report[f"{key.removesuffix('_bytes')}_growth_per_cycle_bytes"] = round(growth / cycles)
    return report


def _summary(runs: list[dict[str, Any]], baseline: int) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for key in ("rss", "pss"):
        growth = [run[f"{key}_growth_after_{baseline}_mb"] for run in runs]
        summary[f"{key}_growth_after_{baseline}_mb_per_round"] = growth
        summary[f"{key}_growth_after_{baseline}_mb_median"] = statistics.median(growth)
    return summary | {"rounds": runs}


def variants(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    chosen: dict[str, dict[str, str]] = {"c_paths": {}, "python_paths": {"FLEETINFER_NATIVE": "0"}}
    for spec in args.variant:
        name, _, assignments = spec.partition("=")
        env = dict(pair.split("=", 1) for pair in assignments.split(",") if pair)
        chosen[name] = env
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only}
    return chosen


def host() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines()
                  if ln.startswith("model name")), platform.processor())  # fmt: skip
    return {
        "cpu": model,
        "avx512_vnni": "avx512_vnni" in cpuinfo,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=3000)
    parser.add_argument("--step", type=int, default=300)
    parser.add_argument("--baseline", type=int, default=300, help="growth is counted from here")
    parser.add_argument("--parallel", type=int, default=1, help="clients connected at once")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved runs of each variant")
    parser.add_argument("--variant", action="append", default=[], help="NAME=VAR=VALUE,...")
    parser.add_argument("--only", nargs="*", help="run only these variants")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    from tests.helpers.tiny_models import affine_repository

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="churn-") as folder:
        tmp = Path(folder)
        repo = affine_repository(tmp / "repo")
        chosen = variants(args)
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
        for _ in range(args.rounds):
            for name, env in chosen.items():
                rounds[name].append(churn(repo, tmp, env, args))
        results = {name: _summary(runs, args.baseline) for name, runs in rounds.items()}
    report = {
        "benchmark": "connect_churn",
        "date": started,
        "host": host(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cycles": args.cycles,
        "step": args.step,
        "parallel": args.parallel,
        "rounds": args.rounds,
        "variants": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
