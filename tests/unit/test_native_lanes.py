"""The compiled request paths (`fleetinfer/server/_native.c`): a client's repeated calls and a
connection's kept requests served in C, everything else handed to Python unchanged. The suites
of the server and of repeated calls run over both paths (the `lanes` fixture); this file checks
what only the C paths do: that they really serve, and that what they cannot serve goes back."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from fleetinfer.client import SharedModelClient
from fleetinfer.errors import MalformedMessageError
from fleetinfer.server import protocol
from fleetinfer.server.channel import Channel, RepeatedCall
from fleetinfer.server.native import NATIVE_ENV, compiled
from fleetinfer.server.protocol import HEADER, ErrorReply, Kind, decode, rebuild_error
from fleetinfer.server.server import Connection, ModelServer

pytestmark = pytest.mark.usefixtures("lanes")


@pytest.fixture
def lanes(monkeypatch: pytest.MonkeyPatch) -> str:
    """Only the C paths here (they must be built): overrides the suite-wide fixture."""
    assert compiled is not None, "fleetinfer.server._native is not built: `make install-dev`"
    monkeypatch.setenv(NATIVE_ENV, "1")
    return "c"


class Counted:
    """Counts the calls of a method it wraps (on the class: every instance's calls)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: type[Any], name: str) -> None:
        self.calls = 0
        original = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def connection_of(server: ModelServer) -> Connection:
    (connection,) = server._connections
    return connection


def test_the_c_module_speaks_the_protocol_of_protocol_py() -> None:
    assert compiled is not None
    assert protocol.HEADER.size == compiled.HEADER_SIZE
    assert compiled.MAX_BODY_BYTES == protocol.MAX_BODY_BYTES
    assert compiled.PROTOCOL_VERSION == protocol.PROTOCOL_VERSION
    assert (compiled.KIND_INFER, compiled.KIND_OK) == (Kind.INFER, Kind.OK)
    assert protocol.REQUEST_ID_AT == 4


def test_repeated_requests_run_in_c_on_both_ends_with_fresh_inputs(
    client: SharedModelClient, server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = client.model("affine")
    in_place = client.empty((1, 4), np.float32)
    # the long way twice (then kept by the client), the kept call's first answer (checked),
    # its second (the server has seen its body before: kept there too)
    for value in (1.0, 2.0, 3.0, 4.0):
        in_place[:] = value
        handle.infer({"x": in_place})
        handle.infer({"x": np.full((2, 4), value, np.float32)})
    channel, connection = client._channel(), connection_of(server)
    assert channel._lane is not None
    assert connection.lane is not None
    assert channel._lane.kept() == 2
    assert connection.lane.kept() >= 2  # with any long-way body sent twice
    python_client = Counted(monkeypatch, Channel, "_call_key")
    python_server = Counted(monkeypatch, Connection, "_handle")
    for i in range(20):
        in_place[:] = i  # read where it lies
        assert handle.infer({"x": in_place})["y"].tolist() == [[i * 3.0 + 1.0] * 4]
        copied = np.full((2, 4), -i, np.float32)  # copied to its staging range by the lane
        y = handle.infer({"x": copied})["y"]
        assert y.tolist() == [[-i * 3.0 + 1.0] * 4] * 2
        assert not np.shares_memory(y, channel.region.buffer)
    assert (python_client.calls, python_server.calls) == (0, 0)
    assert server.in_flight == 0


def test_windows_in_place_somewhere_else_each_time_run_in_c_on_both_ends(
    client: SharedModelClient, server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task's windows drawn into one `empty()` array and sent one by one: once their staged
    call is kept, neither end runs Python for them, whatever array they lie in."""
    handle = client.model("affine")
    windows = client.empty((4, 1, 4), np.float32)
    windows[...] = 1.0
    for i in range(4):  # two long ways, the kept call's first answer (checked), a second
        handle.infer({"x": windows[i]})
    python_client = Counted(monkeypatch, Channel, "_call_key")
    python_server = Counted(monkeypatch, Connection, "_handle")
    for task in range(3):
        windows = client.empty((8, 1, 4), np.float32)
        windows[...] = np.arange(32, dtype=np.float32).reshape(8, 1, 4) - 50 * task
        for i in range(8):
            np.testing.assert_array_equal(handle.infer({"x": windows[i]})["y"], windows[i] * 3 + 1)
    assert (python_client.calls, python_server.calls) == (0, 0)
    assert server.in_flight == 0


class Frozen(Mapping[str, Any]):
    """A mapping that is not a dict: the C lane leaves it to Python."""

    def __init__(self, items: dict[str, Any]) -> None:
        self._items = items

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class Tagged(np.ndarray):  # type: ignore[type-arg]
    """A subclass of ndarray: keyed by Python only."""


@pytest.mark.parametrize(
    "make",
    [
        lambda x: {"x": np.asfortranarray(np.repeat(x, 2, axis=0))[::2]},  # not contiguous
        lambda x: {"x": x.astype(">f4")},  # not in native byte order
        lambda x: Frozen({"x": x}),
        lambda x: {"x": x.view(Tagged)},
    ],
    ids=["strided", "big-endian", "mapping", "subclass"],
)
def test_inputs_the_c_lane_cannot_key_go_the_python_way_with_the_same_outputs(
    client: SharedModelClient, make: Any
) -> None:
    handle = client.model("affine")
    for i in range(4):
        x = np.full((1, 4), float(i), np.float32)
        inputs = make(x)
        y = handle.infer(inputs)["y"]
        np.testing.assert_array_equal(y, x * 3.0 + 1.0)
        lane = client._channel()._lane
        assert lane is not None
        assert lane.call("affine", None, inputs) is None  # not one it can key
    assert client._channel()._repeated  # kept by Python: the Python repeated call served it


def kept_call(client: SharedModelClient) -> RepeatedCall:
    """A repeated call of `affine` on an input in place, kept by both lanes."""
    handle, x = client.model("affine"), client.empty((1, 4), np.float32)
    for value in (1.0, 2.0, 3.0, 4.0):  # as in the test above
        x[:] = value
        handle.infer({"x": x})
    (call,) = client._channel()._repeated.values()
    return call


def test_two_requests_sent_back_to_back_are_both_served_by_the_server_lane(
    client: SharedModelClient, server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    call, channel = kept_call(client), client._channel()
    python_server = Counted(monkeypatch, Connection, "_handle")
    frames = bytearray()
    for request_id in (901, 902):  # one send: the lane finds the second frame in its buffer
        protocol.REQUEST_ID.pack_into(call.frame, protocol.REQUEST_ID_AT, request_id)
        frames += call.frame
    channel.sock.sendall(frames)
    replies = [read_frame(channel.sock) for _ in range(2)]
    assert [(kind, request_id) for kind, request_id, _ in replies] == [
        (Kind.OK, 901),
        (Kind.OK, 902),
    ]
    assert all(body == call.reply for _, _, body in replies)
    assert python_server.calls == 0
    assert server.in_flight == 0


def test_a_frame_that_trickles_in_byte_by_byte_is_served_by_the_server_lane(
    client: SharedModelClient, server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    call, channel = kept_call(client), client._channel()
    python_server = Counted(monkeypatch, Connection, "_handle")
    protocol.REQUEST_ID.pack_into(call.frame, protocol.REQUEST_ID_AT, 77)
    for i in range(len(call.frame)):
        channel.sock.sendall(call.frame[i : i + 1])
        time.sleep(0.001)
    kind, request_id, body = read_frame(channel.sock)
    assert (kind, request_id, body) == (Kind.OK, 77, call.reply)
    assert python_server.calls == 0


def test_a_header_that_is_not_fleetinfers_gets_the_python_paths_typed_error(
    server: ModelServer,
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(server.config.socket_path))
        sock.sendall(b"XX" + bytes(10))
        kind, _, body = read_frame(sock)
        assert kind == Kind.ERROR
        error = rebuild_error(decode(ErrorReply, body))
        assert isinstance(error, MalformedMessageError)
        assert "frame header has magic b'XX' version 0" in str(error)
        assert sock.recv(1) == b""  # then the connection is closed


def read_frame(sock: socket.socket) -> tuple[int, int, bytes]:
    header = _exactly(sock, HEADER.size)
    _, _, kind, request_id, length = HEADER.unpack(header)
    return kind, request_id, _exactly(sock, length)


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


def test_a_connection_that_ended_gives_its_lane_back_even_while_still_referenced(
    client: SharedModelClient, server: ModelServer
) -> None:
    """The lane forgets its kept requests, gives its buffer pages back and forgets its socket
    when the connection ends, not when the object goes (benchmarks/connect_churn.py measures
    what it saves); serving on it afterwards is a closed connection, never another's socket."""
    kept_call(client)
    lane = connection_of(server).lane
    assert lane is not None
    assert lane.kept() > 0
    client.close()
    deadline = time.monotonic() + 10
    while server.connection_count() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.connection_count() == 0
    assert lane.kept() == 0
    with pytest.raises(EOFError, match="closed"):
        lane.serve()
    lane.close()  # twice is harmless
    with pytest.raises(EOFError):
        lane.serve()
