"""Requests from several client processes merge into one execution and get their own rows back.

The server runs in this process (a thread); each client is a fresh Python process that sends the
same request layout round after round, on the parent's signal, so what queues in each round is
known without timing anything: the parent holds the model's one instance, lets every client send,
waits until all of them are queued, then gives the instance back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from fleetinfer.client import InProcessModelClient, SharedModelClient
from fleetinfer.server.executor import ModelExecutor
from fleetinfer.server.server import ModelServer
from tests.helpers.servers import start_server
from tests.helpers.tiny_models import affine_model, write_config

pytestmark = pytest.mark.usefixtures("lanes")  # the C and the Python request paths

BATCHES = (1, 2, 3)  # rows per request of each client process
ROUNDS = 4

CLIENT = """
import json, sys
import numpy as np
from fleetinfer.client import SharedModelClient

socket_path, index, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
client = SharedModelClient(socket_path)
handle = client.model("affine")
x = handle.empty((rows, 4), "float32")  # the same layout every round: a kept request
print("ready", flush=True)
for line in sys.stdin:
    round_ = int(line)
    x[...] = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) / 7 + 1000 * index + round_
    y = handle.infer({"x": x})["y"]
    print(json.dumps(y.tolist()), flush=True)
client.close()
"""


def client_input(index: int, round_: int, rows: int) -> np.ndarray:
    """What client `index` sends in `round_` (the same formula as the client script)."""
    base = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) / 7
    return base + np.float32(1000 * index + round_)


def merging_repository(root: Path, *, delay_us: int, instances: int, preferred: int) -> Path:
    affine_model(root / "affine" / "1" / "model.onnx", scale=2.5, bias=0.125)
    extra = (
        f"[batching]\nmax_queue_delay_us = {delay_us}\npreferred_batch_sizes = [{preferred}]\n"
        f"[instances]\ncount = {instances}\n"
    )
    write_config(root / "affine", "affine", extra=extra)
    return root


class ClientProcess:
    def __init__(self, socket_path: Path, index: int, rows: int) -> None:
        self.index, self.rows = index, rows
        self.process = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(socket_path), str(index), str(rows)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self._line() == "ready"

    def send(self, round_: int) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{round_}\n")
        self.process.stdin.flush()

    def output(self) -> np.ndarray:
        return np.array(json.loads(self._line()), dtype=np.float32)

    def _line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(30)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextmanager
def clients(socket_path: Path) -> Iterator[list[ClientProcess]]:
    started: list[ClientProcess] = []
    try:
        for index, rows in enumerate(BATCHES):
            started.append(ClientProcess(socket_path, index, rows))
        yield started
    finally:
        for client in started:
            client.stop()


@contextmanager
def instance_held(executor: ModelExecutor) -> Iterator[None]:
    """The model's one instance taken, as by a long execution: requests queue until the block
    ends, then the batcher takes every compatible one queued."""
    with executor._lock:
        executor._busy += 1
    try:
        yield
    finally:
        executor._release()


def wait_until_queued(executor: ModelExecutor, requests: int) -> None:
    deadline = time.monotonic() + 30.0
    while len(executor._queue) < requests and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(executor._queue) == requests


def separate_calls(repo: Path, round_: int) -> list[np.ndarray]:
    """Each client's request run alone, in process: what a merged execution must give back."""
    client = InProcessModelClient(repo, intra_op_threads=1)
    try:
        handle = client.model("affine")
        return [
            handle.infer({"x": client_input(index, round_, rows)})["y"]
            for index, rows in enumerate(BATCHES)
        ]
    finally:
        client.close()


def test_queued_requests_of_several_processes_run_as_one_execution_and_get_their_own_rows(
    short_dir: Path,
) -> None:
    repo = merging_repository(short_dir / "repo", delay_us=0, instances=1, preferred=8)
    server = start_server(repo, short_dir / "m.sock")
    try:
        executor = server.registry.resolve("affine")
        with clients(server.config.socket_path) as procs:
            for client in procs:  # round 0, one at a time: each runs alone (its direct plan)
                client.send(0)
                np.testing.assert_array_equal(
                    client.output(), separate_calls(repo, 0)[client.index]
                )
            for round_ in range(1, ROUNDS + 1):
                with instance_held(executor):
                    for client in procs:
                        client.send(round_)
                    wait_until_queued(executor, len(procs))
                expected = separate_calls(repo, round_)
                for client in procs:  # bit for bit what the request alone gives
                    np.testing.assert_array_equal(client.output(), expected[client.index])
        values = server.stats.get("affine", 1).snapshot()
        assert values["nv_inference_exec_count"] == len(BATCHES) + ROUNDS
        assert values["nv_inference_count"] == sum(BATCHES) * (ROUNDS + 1)
        assert values["nv_inference_request_success"] == len(BATCHES) * (ROUNDS + 1)
        assert values["nv_inference_queue_duration_us"] > 0
    finally:
        server.stop()


def test_a_queue_delay_waits_for_the_preferred_batch_from_several_processes(
    short_dir: Path,
) -> None:
    """With a queue delay far longer than the test, each round's requests wait for each other:
    exactly one execution per round, whatever order they arrive in."""
    repo = merging_repository(
        short_dir / "repo", delay_us=60_000_000, instances=1, preferred=sum(BATCHES)
    )
    server = start_server(repo, short_dir / "d.sock")
    try:
        with clients(server.config.socket_path) as procs:
            for round_ in range(ROUNDS):
                for client in procs:
                    client.send(round_)
                expected = separate_calls(repo, round_)
                for client in procs:
                    np.testing.assert_array_equal(client.output(), expected[client.index])
        values = server.stats.get("affine", 1).snapshot()
        assert values["nv_inference_exec_count"] == ROUNDS
        assert values["nv_inference_count"] == sum(BATCHES) * ROUNDS
    finally:
        server.stop()


def test_batchers_waiting_out_a_queue_delay_survive_a_batch_another_one_took(
    short_dir: Path,
) -> None:
    """Two instances, both batchers waiting for a fuller batch: the one that finds the queue
    emptied by the other when its delay ends goes back to waiting, alive."""
    repo = merging_repository(short_dir / "repo", delay_us=50_000, instances=2, preferred=2)
    server: ModelServer = start_server(repo, short_dir / "t.sock")
    client = SharedModelClient(server.config.socket_path)
    try:
        executor = server.registry.resolve("affine")
        for _ in range(5):
            threads = [
                threading.Thread(
                    target=client.model("affine").infer,
                    args=({"x": np.ones((1, 4), np.float32)},),
                )
                for _ in range(2)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(0.1)  # past the delay: a batcher left waiting has woken up by now
            assert all(t.is_alive() for t in executor._threads)
        y = client.model("affine").infer({"x": np.ones((1, 4), np.float32)})["y"]
        np.testing.assert_array_equal(y, np.full((1, 4), 2.625, np.float32))
    finally:
        client.close()
        server.stop()
