"""The model server as a real process: fuzzing, crash hygiene, hot reload, CDNet exactness."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import pytest

from fleetinfer.client import ModelClient, SharedModelClient
from fleetinfer.server.protocol import (
    ERROR_CLASSES,
    ERROR_CODES,
    HEADER,
    MAGIC,
    PROTOCOL_VERSION,
    Attach,
    ErrorReply,
    FleetinferError,
    InferRequest,
    Kind,
    TensorRef,
    decode,
    frame,
)
from fleetinfer.server.shm import SharedRegion, our_segments
from tests.helpers.tiny_models import affine_model, affine_repository, cdnet_repository

pytestmark = pytest.mark.usefixtures("lanes")  # the C and the Python request paths

INTERNAL_ERROR = ERROR_CODES[FleetinferError]


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    socket_path: Path
    metrics_port: int

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fi-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_server_process(repo: Path, socket_path: Path, log_path: Path) -> ServerProcess:
    command = [sys.executable, "-m", "fleetinfer", "serve", "--models", str(repo)]
    command += ["--socket", str(socket_path), "--metrics-port", "0", "--intra-op-threads", "1"]
    command += ["--max-request-mb", "16"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise AssertionError(f"server did not start: {log_path.read_text()}")
    ready = json.loads(line)
    return ServerProcess(proc, Path(ready["socket"]), int(ready["metrics_port"]))


@pytest.fixture
def server(short_dir: Path) -> Iterator[ServerProcess]:
    repo = affine_repository(short_dir / "repo")
    server = start_server_process(repo, short_dir / "s.sock", short_dir / "server.log")
    yield server
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0, (short_dir / "server.log").read_text()
    assert server.proc.stdout is not None
    server.proc.stdout.close()


class RawClient:
    """Speaks the protocol by hand, to send what a correct client never would."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.region = SharedRegion.create(1 << 16)
        self.sock = self._connect()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(self.socket_path))
        return sock

    def attach(self) -> None:
        self.sock.sendall(frame(Kind.ATTACH, 1, Attach(self.region.name, self.region.size_bytes)))
        assert self.reply()[0] == Kind.OK

    def reconnect(self) -> None:
        self.sock.close()
        self.region.unlink()  # the server unlinks it when it drops the connection anyway
        self.region.close()
        self.region = SharedRegion.create(1 << 16)
        self.sock = self._connect()
        self.attach()

    def reply(self) -> tuple[int, bytes]:
        header = self._exact(HEADER.size)
        _magic, _version, kind, _rid, length = HEADER.unpack(header)
        return kind, self._exact(length)

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            more = self.sock.recv(n - len(data))
            if not more:
                raise ConnectionError("server closed the connection")
            data += more
        return data

    def close(self) -> None:
        self.sock.close()
        self.region.unlink()
        self.region.close()


def typed_error(kind: int, body: bytes) -> int:
    assert kind == Kind.ERROR, "a malformed request was answered as a success"
    reply = decode(ErrorReply, body)
    assert reply.code in ERROR_CLASSES, reply.message
    assert reply.code != INTERNAL_ERROR, reply.message
    return reply.code


def bad_infer(rng: random.Random) -> InferRequest:
    """A request that is wrong in one of many ways."""
    good = TensorRef("x", "float32", (1, 4), 0, 16)
    choices = [
        InferRequest("nope", 0, (good,), 4096, 4096),
        InferRequest("affine", 99, (good,), 4096, 4096),
        InferRequest("affine", 0, (TensorRef("z", "float32", (1, 4), 0, 16),), 4096, 4096),
        InferRequest("affine", 0, (TensorRef("x", "float64", (1, 4), 0, 32),), 4096, 4096),
        InferRequest("affine", 0, (TensorRef("x", "complex", (1, 4), 0, 32),), 4096, 4096),
        InferRequest("affine", 0, (TensorRef("x", "float32", (1, 5), 0, 20),), 4096, 4096),
        InferRequest("affine", 0, (TensorRef("x", "float32", (9, 4), 0, 144),), 4096, 4096),
        InferRequest("affine", 0, (TensorRef("x", "float32", (-1, 4), 0, -16),), 4096, 4096),
        InferRequest("affine", 0, (TensorRef("x", "float32", (1, 4), 0, 17),), 4096, 4096),
        InferRequest("affine", 0, (TensorRef("x", "float32", (1, 4), 2, 16),), 4096, 4096),
        InferRequest("affine", 0, (TensorRef("x", "float32", (1, 4), 1 << 16, 16),), 4096, 4096),
        InferRequest("affine", 0, (TensorRef("x", "float32", (1, 4), -64, 16),), 4096, 4096),
        InferRequest("affine", 0, (TensorRef("x", "float32", (1 << 40, 4), 0, 1 << 46),), 0, 64),
        InferRequest("affine", 0, (TensorRef("x", "float32", (1,) * 40, 0, 4),), 4096, 4096),
        InferRequest("affine", 0, (good, good), 4096, 4096),
        InferRequest("affine", 0, (), 4096, 4096),
        InferRequest("affine", 0, (good,), 1 << 16, 4096),
        InferRequest("affine", 0, (good,), -4096, 4096),
        InferRequest("affine", 0, (good,), 4096, 1 << 20),
        InferRequest("affine", 0, (good,), 4096, 8),  # the outputs do not fit the window
    ]
    return rng.choice(choices)


def garbage_body(rng: random.Random) -> bytes:
    choices = [
        rng.randbytes(rng.randint(0, 64)),
        msgspec.msgpack.encode(["affine", "zero", [], 0, 0]),
        msgspec.msgpack.encode({"model": "affine"}),
        msgspec.msgpack.encode(["affine", 0, [["x", "float32", "shape", 0, 16]], 0, 64]),
        msgspec.msgpack.encode(["affine", 0, [["x", "float32", [1, 4], 0.5, 16]], 0, 64]),
        msgspec.msgpack.encode(["affine", 0, [["x", "float32", [1, 4], 0, (1 << 64) - 1]], 0, 64]),
    ]
    return rng.choice(choices)


def raw_frame(kind: int, body: bytes) -> bytes:
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, kind, 7, len(body)) + body


def fuzz_connection_breakers(raw: RawClient, rng: random.Random) -> int:
    """Frames that end a connection: bad magic, oversized bodies, truncation, disconnects."""
    case = rng.randrange(5)
    if case == 0:
        raw.sock.sendall(b"XX" + rng.randbytes(10))
        typed_error(*raw.reply())
    elif case == 1:
        raw.sock.sendall(HEADER.pack(MAGIC, PROTOCOL_VERSION, Kind.INFER, 1, 1 << 30))
        typed_error(*raw.reply())
    elif case == 2:  # truncated message, then gone
        raw.sock.sendall(raw_frame(Kind.INFER, rng.randbytes(40))[: rng.randint(1, 30)])
    elif case == 3:  # a good request, but the client disconnects before the answer
        region = raw.region
        region.view(0, np.dtype(np.float32), (1, 4))[...] = 1.0
        request = InferRequest("affine", 0, (TensorRef("x", "float32", (1, 4), 0, 16),), 64, 64)
        raw.sock.sendall(frame(Kind.INFER, 9, request))
    else:  # a frame header cut short
        raw.sock.sendall(HEADER.pack(MAGIC, PROTOCOL_VERSION, Kind.INFER, 1, 50)[:7])
    raw.reconnect()
    return 1


def fuzz_one(raw: RawClient, rng: random.Random) -> int:
    """One malformed request on a live connection; returns how many were sent."""
    case = rng.randrange(10)
    if case < 6:
        raw.sock.sendall(frame(Kind.INFER, 3, bad_infer(rng)))
    elif case < 8:
        raw.sock.sendall(
            raw_frame(rng.choice([Kind.INFER, Kind.ATTACH, Kind.CONTROL]), garbage_body(rng))
        )
    elif case == 8:
        raw.sock.sendall(raw_frame(rng.choice([0, 5, 15, 16, 17, 99, 255]), b""))
    else:
        name = rng.choice(["../x", "fleetinfer-1-0123456789abcdef", raw.region.name])
        size = rng.choice([0, -1, 1 << 40, raw.region.size_bytes * 2])
        raw.sock.sendall(frame(Kind.ATTACH, 4, Attach(name, size)))
    typed_error(*raw.reply())
    return 1


def test_thousands_of_malformed_requests_never_crash_the_server(server: ServerProcess) -> None:
    rng = random.Random(6)
    raw = RawClient(server.socket_path)
    sent = 0
    try:
        raw.sock.sendall(frame(Kind.INFER, 1, bad_infer(rng)))  # infer before attach
        typed_error(*raw.reply())
        raw.attach()
        deadline = time.monotonic() + 50
        while sent < 5200 and time.monotonic() < deadline:
            if rng.random() < 0.04:
                sent += fuzz_connection_breakers(raw, rng)
            else:
                sent += fuzz_one(raw, rng)
    finally:
        raw.close()
    assert sent >= 5000, f"only {sent} malformed requests in the time budget"
    assert server.alive()
    client = SharedModelClient(server.socket_path)
    try:
        y = client.model("affine").infer({"x": np.ones((1, 4), np.float32)})["y"]
        np.testing.assert_array_equal(y, np.full((1, 4), 3.0, np.float32))
    finally:
        client.close()


CLIENT_SCRIPT = """
import sys, time, numpy as np
from fleetinfer.client import SharedModelClient

client = SharedModelClient(sys.argv[1])
client.model("affine").infer({"x": np.ones((1, 4), np.float32)})
print("ready", flush=True)
time.sleep(600)
"""


def test_killed_clients_leave_no_shared_memory_behind(server: ServerProcess) -> None:
    clients = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT_SCRIPT, str(server.socket_path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    prefixes = [f"fleetinfer-{c.pid}-" for c in clients]
    try:
        for c in clients:
            assert c.stdout is not None
            assert c.stdout.readline().strip() == "ready"
        assert all(any(s.startswith(p) for s in our_segments()) for p in prefixes)
    finally:
        for c in clients:
            c.kill()
            c.wait(10)
            assert c.stdout is not None
            c.stdout.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _left(prefixes):
        time.sleep(0.05)
    assert not _left(prefixes)
    assert server.alive()


def _left(prefixes: list[str]) -> list[str]:
    return [s for s in our_segments() if any(s.startswith(p) for p in prefixes)]


def test_switching_versions_under_load_fails_no_request(short_dir: Path) -> None:
    repo = affine_repository(short_dir / "repo", versions={1: 2.0})
    server = start_server_process(repo, short_dir / "h.sock", short_dir / "server.log")
    stop = threading.Event()
    failures: list[BaseException] = []
    seen: list[set[float]] = [set() for _ in range(4)]

    def loop(i: int) -> None:
        client = SharedModelClient(server.socket_path)
        try:
            handle = client.model("affine")
            while not stop.is_set():
                seen[i].add(float(handle.infer({"x": np.ones((2, 4), np.float32)})["y"][0, 0]))
        except BaseException as exc:
            failures.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(4)]
    control = SharedModelClient(server.socket_path)
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        affine_model(repo / "affine" / "2" / "model.onnx", scale=3.0)
        assert control.control("reload", "affine") == {"affine": (2,)}
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        control.close()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)
        assert server.proc.stdout is not None
        server.proc.stdout.close()
    assert not failures, failures[:3]
    assert all(s == {3.0, 4.0} for s in seen), seen  # every client saw version 1, then 2


def test_cdnet_outputs_through_the_server_equal_inprocess_outputs_exactly(
    short_dir: Path,
) -> None:
    from roadchange.pipeline import INPUT_NAME

    repo = cdnet_repository(short_dir / "cdnet-repo")
    server = start_server_process(repo, short_dir / "c.sock", short_dir / "server.log")
    client = SharedModelClient(server.socket_path)
    try:
        inprocess = ModelClient.from_mode("inprocess", repository=repo, intra_op_threads=1)
        spec = inprocess.repository.config("cdnet").input(INPUT_NAME)  # type: ignore[attr-defined]
        rng = np.random.default_rng(1)
        for batch in (1, 4):
            shape = (batch, *spec.shape[1:])
            x = rng.random(shape, dtype=np.float32)
            shared = client.model("cdnet").infer({INPUT_NAME: x})
            local = inprocess.model("cdnet").infer({INPUT_NAME: x})
            assert shared.keys() == local.keys()
            for name in local:
                np.testing.assert_array_equal(shared[name], local[name])
    finally:
        client.close()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)
        assert server.proc.stdout is not None
        server.proc.stdout.close()


def test_the_server_process_refuses_a_missing_repository(short_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fleetinfer.cli.serve", "--models", str(short_dir / "none")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FLEETINFER_SOCKET": str(short_dir / "n.sock")},
    )
    assert result.returncode == 3  # fix the configuration
    assert "is not a directory" in result.stderr


def test_sighup_rereads_the_repository(short_dir: Path) -> None:
    repo = affine_repository(short_dir / "repo", versions={1: 2.0})
    server = start_server_process(repo, short_dir / "hup.sock", short_dir / "server.log")
    client = SharedModelClient(server.socket_path)
    try:
        assert client.versions("affine") == (1,)
        affine_model(repo / "affine" / "2" / "model.onnx", scale=3.0)
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while client.versions("affine") != (2,) and time.monotonic() < deadline:
            time.sleep(0.05)
        y = client.model("affine").infer({"x": np.ones((1, 4), np.float32)})["y"]
        np.testing.assert_array_equal(y, np.full((1, 4), 4.0, np.float32))
    finally:
        client.close()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        assert server.proc.stdout is not None
        server.proc.stdout.close()
