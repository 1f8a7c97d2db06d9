"""Fleet drill on this machine: three `fleetinfer run` nodes, each its own process group, socket
folder and (as root) IPC namespace and /dev/shm, on one queue with PostgreSQL results.

1. Kill and spot, on Redis and on SQS (a moto server, with the tests' cheap clock:
   tests/helpers/moto_server.py): 3,000 model-calling tasks each; node1 is
   SIGKILLed whole at a fifth of them and a replacement starts, node2 gets a spot notice from a
   local instance-metadata stub at two fifths and drains. Reported: tasks, results, duplicates,
   lost, the tasks received again between the kill and the notice (the killed node's in-flight
   ones), the seconds from the kill until the last of them started again (the queue's visibility timeout is 2 s), the spot drain time.
2. Autoscaled, on Redis: the backlog policy (`fleetinfer.plan.policy.desired_nodes`) decides every
   second from `broker.stats()` how many nodes run (600 queued tasks per node, 0 to 3 nodes); every
   decision that changed the count is listed with the numbers that drove it.

Needs Redis on 127.0.0.1:6379 and PostgreSQL at postgresql://postgres@127.0.0.1:5432/test
(`make services`); starts its own moto server. Run from the repository root:

    .venv/bin/python benchmarks/fleet_drill.py [--backends redis,sqs] [--no-autoscale]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
from tests.helpers.local_fleet import autoscaled_drill, kill_and_spot_drill, shm_namespaces_work

from fleetinfer.plan.policy import BacklogPolicy
from fleetinfer.queue import open_broker

REDIS = "redis://127.0.0.1:6379/0"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
VISIBILITY = "visibility_timeout_s=2&max_receives=20"


@contextmanager
def moto_server() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.moto_server", "-H", "127.0.0.1", "-p", str(port)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline, "moto did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def isolated(queue_url: str) -> Iterator[str]:
    """A fresh results table, dropped afterwards; the queue purged afterwards."""
    table = f"drill{uuid.uuid4().hex[:10]}"
    try:
        yield f"{POSTGRES}?table={table}"
    finally:
        with open_broker(queue_url) as broker:
            broker.purge()
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')


def queue_url(backend: str, endpoint: str) -> str:
    name = f"drill{uuid.uuid4().hex[:10]}"
    if backend == "redis":
        return f"{REDIS}?queue={name}&{VISIBILITY}"
    return f"sqs://{name}?region=us-east-1&endpoint_url={endpoint}&{VISIBILITY}"


def kill_and_spot(backend: str, endpoint: str, tasks: int) -> dict[str, Any]:
    url = queue_url(backend, endpoint)
    with isolated(url) as results, tempfile.TemporaryDirectory() as root:
        report = kill_and_spot_drill(url, results, Path(root), tasks=tasks)
    report.pop("shm_segments_per_node")
    return report


def autoscaled() -> dict[str, Any]:
    url = queue_url("redis", "")
    policy = BacklogPolicy(target_in_flight_per_node=600, floor_nodes=0, ceiling_nodes=3)
    started_s = time.monotonic()
    with isolated(url) as results, tempfile.TemporaryDirectory() as root:
        report, decisions = autoscaled_drill(url, results, Path(root), policy=policy)
    report.pop("followed")
    report["run_s"] = round(time.monotonic() - started_s, 1)
    report["policy"] = policy.to_json()
    report["decisions"] = [d.line() for d in decisions if d.action != "hold"]
    report["decisions_total"] = len(decisions)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="redis,sqs")
    parser.add_argument("--tasks", type=int, default=3000, help="tasks per drill")
    parser.add_argument("--no-autoscale", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    out: dict[str, Any] = {"cores": os.cpu_count(), "private_shm": shm_namespaces_work()}
    with moto_server() as endpoint:
        for backend in args.backends.split(","):
            out[f"kill_and_spot_{backend}"] = kill_and_spot(backend, endpoint, args.tasks)
    if not args.no_autoscale:
        out["autoscaled_redis"] = autoscaled()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
