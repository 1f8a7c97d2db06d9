"""A request a client makes again and again is encoded once and answered the same way each
time (`RepeatedCall` in `fleetinfer.server.channel`); it must behave exactly like the long way."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from fleetinfer.client import SharedModelClient
from fleetinfer.errors import MalformedMessageError, UnknownModelError
from fleetinfer.server import channel as channel_module
from fleetinfer.server.channel import (
    COPY_OUT_MAX_BYTES,
    REPEATED_CALLS_KEPT,
    REPEATED_SHARE_MAX,
    Arena,
    Channel,
)
from fleetinfer.server.executor import DirectPlan, ModelExecutor
from fleetinfer.server.server import ModelServer
from tests.helpers.servers import instances_given_back, start_server
from tests.helpers.tiny_models import write_config

pytestmark = pytest.mark.usefixtures("lanes")  # the C and the Python request paths


def channel_of(client: SharedModelClient) -> Channel:
    return client._channel()


def free_bytes(channel: Channel) -> int:
    return sum(size for _, size in channel.arena._free)


def test_a_repeated_call_copies_fresh_inputs_and_returns_outputs_of_their_own(
    client: SharedModelClient,
) -> None:
    handle = client.model("affine")
    outputs = [handle.infer({"x": np.full((2, 4), float(i), np.float32)})["y"] for i in range(6)]
    for i, y in enumerate(outputs):  # each call's outputs were copied out: none overwritten
        assert y.tolist() == [[i * 3.0 + 1.0] * 4] * 2
        assert not np.shares_memory(y, channel_of(client).region.buffer)
    (call,) = channel_of(client)._repeated.values()
    assert [name for name, _ in call.staged] == ["x"]  # copied in: a range of its own


def test_an_input_in_the_region_is_read_in_place_by_a_repeated_call(
    client: SharedModelClient,
) -> None:
    handle = client.model("affine")
    x = client.empty((1, 4), np.float32)
    for value in (1.0, -2.0, 7.5):
        x[:] = value
        assert handle.infer({"x": x})["y"].tolist() == [[value * 3.0 + 1.0] * 4]
    (call,) = channel_of(client)._repeated.values()
    assert call.staged == ()  # nothing copied: the server reads `x` where it lies


def test_windows_drawn_into_one_array_and_sent_one_by_one_share_one_staged_call(
    client: SharedModelClient,
) -> None:
    """A task draws its windows into one `empty()` array and sends them one at a time: each
    lies in the region, somewhere else each time. From the second window on they share one
    repeated call that copies them to its staging range: one request body the server knows."""
    handle = client.model("affine")
    for task in range(3):
        windows = client.empty((6, 1, 4), np.float32)
        windows[...] = np.arange(24, dtype=np.float32).reshape(6, 1, 4) + 100 * task
        for i in range(6):
            y = handle.infer({"x": windows[i]})["y"]
            np.testing.assert_array_equal(y, windows[i] * 3.0 + 1.0)
            assert not np.shares_memory(y, windows)
        del windows
    (call,) = channel_of(client)._repeated.values()
    assert [name for name, _ in call.staged] == ["x"]  # staged, wherever the window lay


def test_windows_too_large_to_copy_each_call_go_the_long_way(
    client: SharedModelClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(channel_module, "STAGED_MOVING_MAX_BYTES", 16)  # a window is 32 bytes
    handle = client.model("affine")
    windows = client.empty((6, 2, 4), np.float32)
    windows[...] = np.arange(48, dtype=np.float32).reshape(6, 2, 4)
    for i in range(6):
        np.testing.assert_array_equal(handle.infer({"x": windows[i]})["y"], windows[i] * 3 + 1)
    assert not channel_of(client)._repeated


def test_an_input_read_in_place_stays_in_place_next_to_moving_windows(
    client: SharedModelClient,
) -> None:
    handle, fixed = client.model("affine"), client.empty((1, 4), np.float32)
    windows = client.empty((4, 1, 4), np.float32)
    windows[...] = np.arange(16, dtype=np.float32).reshape(4, 1, 4)
    for value in (1.0, 2.0):  # kept in place first: its place repeats
        fixed[:] = value
        handle.infer({"x": fixed})
    for i in range(4):
        np.testing.assert_array_equal(handle.infer({"x": windows[i]})["y"], windows[i] * 3 + 1)
        fixed[:] = -i
        assert handle.infer({"x": fixed})["y"].tolist() == [[-i * 3.0 + 1.0] * 4]
    kept = channel_of(client)._repeated.values()
    assert sorted(len(call.staged) for call in kept) == [0, 1]  # in place, and staged


def test_requests_of_other_shapes_are_repeated_calls_of_their_own(
    client: SharedModelClient,
) -> None:
    handle = client.model("affine")
    for _ in range(3):
        for batch in (1, 2, 5):
            x = np.arange(batch * 4, dtype=np.float32).reshape(batch, 4)
            np.testing.assert_array_equal(handle.infer({"x": x})["y"], x * 3.0 + 1.0)
    assert len(channel_of(client)._repeated) == 3


def test_a_repeated_call_follows_a_version_change_and_raises_server_errors(
    client: SharedModelClient,
) -> None:

    handle, x = client.model("affine"), np.ones((1, 4), np.float32)
    for _ in range(3):
        assert handle.infer({"x": x})["y"][0, 0] == 4.0  # version 2: x * 3 + 1
    client.control("load", "affine", 1)
    client.control("unload", "affine", 2)
    assert handle.infer({"x": x})["y"][0, 0] == 3.0  # version 1 now (x * 2 + 1): a new reply
    with pytest.raises(UnknownModelError):
        handle.infer({"x": x}, version=2)
    client.control("unload", "affine", 1)
    with pytest.raises(UnknownModelError):
        handle.infer({"x": x})
    client.control("load", "affine")
    for _ in range(2):
        assert handle.infer({"x": x})["y"][0, 0] == 4.0


def test_large_outputs_are_not_repeated_calls(client: SharedModelClient) -> None:
    handle = client.model("identity")  # 256 KiB per sample: leased, not copied out
    for _ in range(3):
        handle.infer({"x": np.ones((1, 64 * 1024), np.float32)})
    assert COPY_OUT_MAX_BYTES < 64 * 1024 * 4
    assert channel_of(client)._repeated == {}


def test_repeated_calls_keep_a_bounded_share_of_the_region_and_give_it_back(
    server: ModelServer,
) -> None:
    client = SharedModelClient(server.config.socket_path, region_bytes=1 << 20)
    try:
        channel, handle = channel_of(client), client.model("affine")
        arrays = [client.empty((1, 4), np.float32) for _ in range(REPEATED_CALLS_KEPT + 4)]
        free_at_start = free_bytes(channel)
        for i, x in enumerate(arrays):  # each at its own offset: more layouts than are kept
            x[:] = i
            for _ in range(2):  # the second time a layout goes the long way, it is kept
                assert handle.infer({"x": x})["y"][0, 0] == i * 3.0 + 1.0
        assert 0 < len(channel._repeated) <= REPEATED_CALLS_KEPT
        assert channel._repeated_bytes <= channel.region.size_bytes // REPEATED_SHARE_MAX
        kept = sum(size for call in channel._repeated.values() for _, size in call.kept)
        assert free_bytes(channel) == free_at_start - kept  # nothing else stays taken
        channel._drop_repeated()
        assert free_bytes(channel) == free_at_start
    finally:
        client.close()


def test_growing_the_region_drops_repeated_calls_and_they_come_back(
    server: ModelServer,
) -> None:
    client = SharedModelClient(server.config.socket_path, region_bytes=1 << 20)
    try:
        handle, small = client.model("affine"), np.ones((1, 4), np.float32)
        for _ in range(2):
            handle.infer({"x": small})
        channel = channel_of(client)
        assert len(channel._repeated) == 1
        big = client.model("identity").infer({"x": np.ones((8, 64 * 1024), np.float32)})
        assert channel.region.size_bytes > 1 << 20  # 2 MiB in, 2 MiB out: it grew
        assert channel._repeated == {}
        del big
        for _ in range(2):
            assert handle.infer({"x": small})["y"].tolist() == [[4.0] * 4]
        assert len(channel._repeated) == 1
    finally:
        client.close()


def concat_model(path: Path, copies: int) -> None:
    """y = x repeated `copies` times along the features: outputs grow with `copies`."""
    node = helper.make_node("Concat", ["x"] * copies, ["y"], axis=1)
    graph = helper.make_graph(
        [node],
        "concat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4 * copies])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def test_outputs_that_outgrow_a_repeated_call_go_the_long_way(short_dir: Path) -> None:
    repo = short_dir / "repo"
    concat_model(repo / "concat" / "1" / "model.onnx", copies=1)
    write_config(repo / "concat", "concat")
    config = repo / "concat" / "config.toml"  # the output's features vary by version
    config.write_text(config.read_text().replace("shape = [-1, 4]", "shape = [-1, -1]", 2))
    config.write_text(config.read_text().replace("shape = [-1, -1]", "shape = [-1, 4]", 1))
    server = start_server(repo, short_dir / "c.sock")
    client = SharedModelClient(server.config.socket_path)
    try:
        handle, x = client.model("concat"), np.arange(4, dtype=np.float32).reshape(1, 4)
        for _ in range(2):
            assert handle.infer({"x": x})["y"].shape == (1, 4)
        (call,) = channel_of(client)._repeated.values()
        concat_model(repo / "concat" / "2" / "model.onnx", copies=64)  # 1 KiB of outputs
        client.control("load", "concat", 2)
        for _ in range(2):
            np.testing.assert_array_equal(handle.infer({"x": x})["y"], np.tile(x, 64))
        (bigger,) = channel_of(client)._repeated.values()
        assert bigger.window[1] > call.window[1]
    finally:
        client.close()
        server.stop()


def test_the_server_runs_a_repeated_call_in_its_fast_lane_without_the_executor_queue(
    client: SharedModelClient, server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle, x = client.model("affine"), np.ones((1, 4), np.float32)
    for _ in range(4):  # the long way, its plan, then once through the executor to the lane
        handle.infer({"x": x})
    executions: list[int] = []
    original = ModelExecutor.execute
    monkeypatch.setattr(
        ModelExecutor, "execute", lambda self, batch: executions.append(1) or original(self, batch)
    )
    stats = server.registry.resolve("affine").stats
    before = stats.snapshot()["nv_inference_request_success"]
    for i in range(10):
        x[:] = i
        assert handle.infer({"x": x})["y"][0, 0] == i * 3.0 + 1.0
    assert executions == []  # every one ran in the fast lane
    assert stats.snapshot()["nv_inference_request_success"] == before + 10


def test_a_region_shrunk_under_a_fast_lane_is_refused_the_long_way(
    client: SharedModelClient, server: ModelServer
) -> None:
    handle, x = client.model("affine"), client.empty((1, 4), np.float32)
    x[:] = 1.0
    for _ in range(3):
        handle.infer({"x": x})
    region = channel_of(client).region
    os.ftruncate(region.fd, region.size_bytes // 2)  # `x` stays inside; the kept window not
    with pytest.raises(MalformedMessageError, match="shrank"):
        handle.infer({"x": x})
    assert instances_given_back(server, "affine")  # the error goes out just before that
    assert server.in_flight == 0


def test_a_request_sent_once_is_not_kept_and_kept_ranges_come_from_the_end(
    client: SharedModelClient,
) -> None:
    handle, channel = client.model("affine"), channel_of(client)
    handle.infer({"x": np.ones((3, 4), np.float32)})
    assert channel._repeated == {}  # seen once: nothing kept for it
    handle.infer({"x": np.ones((3, 4), np.float32)})
    (call,) = channel._repeated.values()
    end = channel.region.size_bytes
    assert all(offset >= end - 4096 for offset, _ in call.kept)  # away from short-lived arrays
    assert channel.arena.alloc(16) == 0  # the low offsets stay free for them


def test_the_arena_takes_a_high_range_from_the_last_block_that_fits() -> None:
    arena = Arena(1024)
    low = arena.alloc(64)
    assert arena.alloc_high(100) == 1024 - 128  # aligned to 64 bytes, from the end
    assert arena.alloc_high(2048) is None
    arena.free(1024 - 128, 128)
    arena.free(low, 64)
    assert arena._free == [(0, 1024)]


class ExpiredError(Exception):
    """What a task's time limit raises from its SIGALRM handler (`worker._time_limit`)."""


def test_a_signal_handler_that_raises_during_a_call_ends_it_and_the_next_call_is_answered(
    client: SharedModelClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle, x = client.model("affine"), client.empty((1, 4), np.float32)
    for value in (1.0, 2.0, 3.0, 4.0):  # kept on both ends
        x[:] = value
        handle.infer({"x": x})
    slow, original = threading.Event(), ModelExecutor._run_bound

    def sleepy(self: ModelExecutor, plan: DirectPlan) -> bool:
        if slow.is_set():
            time.sleep(1.0)
        return original(self, plan)

    def expire(signum: int, frame: object) -> None:
        raise ExpiredError

    monkeypatch.setattr(ModelExecutor, "_run_bound", sleepy)
    previous = signal.signal(signal.SIGALRM, expire)
    try:
        slow.set()
        started = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(ExpiredError):
            handle.infer({"x": x})
        assert time.monotonic() - started < 0.8  # interrupted, not waited out
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)
    slow.clear()
    x[:] = 2.0  # the late reply to the interrupted call is not taken for this one's
    assert handle.infer({"x": x})["y"].tolist() == [[7.0] * 4]
