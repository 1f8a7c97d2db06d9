"""The shared model server in this process (a thread), through the `shared` client."""

from __future__ import annotations

import itertools
import os
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from fleetinfer.client import InProcessModelClient, ModelClient, SharedModelClient
from fleetinfer.errors import (
    InferenceError,
    InvalidInputError,
    MalformedMessageError,
    PayloadTooLargeError,
    ServerUnavailableError,
    UnknownModelError,
)
from fleetinfer.server.executor import ModelExecutor
from fleetinfer.server.server import ModelServer
from fleetinfer.server.shm import SHM_DIR, our_segments
from tests.helpers.servers import FEATURES, instances_given_back, start_server
from tests.helpers.tiny_models import affine_repository, write_config

pytestmark = pytest.mark.usefixtures("lanes")  # the C and the Python request paths


def test_outputs_equal_inprocess_outputs_exactly_for_single_and_batched_requests(
    client: SharedModelClient, repo: Path
) -> None:
    inprocess = ModelClient.from_mode("inprocess", repository=repo, intra_op_threads=1)
    rng = np.random.default_rng(0)
    for batch in (1, 3, 8):
        x = rng.standard_normal((batch, 4)).astype(np.float32)
        shared = client.model("affine").infer({"x": x})["y"]
        np.testing.assert_array_equal(shared, inprocess.model("affine").infer({"x": x})["y"])


def test_large_outputs_are_written_straight_into_the_region_and_stay_valid(
    client: SharedModelClient,
) -> None:
    handle = client.model("identity")
    first = np.full((2, FEATURES), 1.5, np.float32)
    second = np.full((2, FEATURES), -7.0, np.float32)
    out1 = handle.infer({"x": first})["y"]
    out2 = handle.infer({"x": second})["y"]
    np.testing.assert_array_equal(out1, first)  # the second request did not overwrite it
    np.testing.assert_array_equal(out2, second)


def test_a_repeated_request_layout_reads_fresh_inputs_every_time(
    client: SharedModelClient, server: ModelServer
) -> None:
    """The server caches a validated layout per request body; the contents must still be new."""
    handle = client.model("affine")
    for i in range(20):
        x = np.full((1, 4), float(i), np.float32)
        assert handle.infer({"x": x})["y"].tolist() == [[i * 3.0 + 1.0] * 4]  # version 2
    (connection,) = list(server._connections)
    # two layouts: the first request's, then the client's repeated call, reused 18 times
    assert len(connection.prepared._layouts) == 2
    assert len(client._channel()._repeated) == 1


def test_a_region_shrunk_under_a_cached_layout_is_refused_before_it_is_read(
    client: SharedModelClient, server: ModelServer
) -> None:

    handle, x = client.model("affine"), np.ones((1, 4), np.float32)
    handle.infer({"x": x})  # the layout is cached now
    region = client._channel().region
    os.ftruncate(region.fd, region.size_bytes // 2)  # the inputs stay in the first half
    with pytest.raises(MalformedMessageError, match="shrank"):
        handle.infer({"x": x})
    assert instances_given_back(server, "affine")  # the error goes out just before that
    fresh = SharedModelClient(server.config.socket_path)
    try:
        assert fresh.model("affine").infer({"x": x})["y"].tolist() == [[4.0] * 4]
    finally:
        fresh.close()


def test_a_cached_request_layout_follows_a_version_change(client: SharedModelClient) -> None:
    handle, x = client.model("affine"), np.ones((1, 4), np.float32)
    assert handle.infer({"x": x})["y"][0, 0] == 4.0  # newest: version 2 (x * 3 + 1)
    client.control("unload", "affine", 2)
    client.control("load", "affine", 1)
    assert handle.infer({"x": x})["y"][0, 0] == 3.0  # the same request body, now version 1
    client.control("load", "affine", 2)
    assert handle.infer({"x": x})["y"][0, 0] == 4.0  # version 1 is still loaded: newest wins


def test_an_empty_array_is_read_in_place_and_equals_a_copied_input(
    client: SharedModelClient,
) -> None:
    handle = client.model("identity")
    x = client.empty((2, FEATURES), np.float32)
    x[:] = np.arange(2 * FEATURES, dtype=np.float32).reshape(2, FEATURES)
    in_place = handle.infer({"x": x})["y"]
    copied = handle.infer({"x": x.copy()})["y"]
    np.testing.assert_array_equal(in_place, copied)
    x[:] = 5.0  # the same array, refilled, is read afresh
    assert float(handle.infer({"x": x})["y"].min()) == 5.0
    inprocess_empty = ModelClient.from_mode("inprocess", repository=Path(".")).empty((2, 3))
    assert inprocess_empty.shape == (2, 3)
    assert inprocess_empty.dtype == np.float32


def test_an_empty_array_is_placed_by_its_recorded_address_until_it_is_collected(
    client: SharedModelClient,
) -> None:
    channel = client._channel()
    x = client.empty((2, FEATURES), np.float32)
    row = x[1]  # a view: not handed out, so placed the slow way (`__array_interface__`)
    assert channel._offset_in_region(row) == channel._offset_in_region(x) + FEATURES * 4
    assert x.__array_interface__["data"][0] - channel.region.address == channel._offset_in_region(x)
    x.dtype = np.int32  # same bytes, another dtype: still in place, same offset
    assert channel._offset_in_region(x) == channel._offset_in_region(row) - FEATURES * 4
    assert len(channel._handed_out) == 1
    del x, row
    assert channel._handed_out == {}  # no record outlives its array


def test_holding_many_outputs_does_not_grow_the_region_without_bound(
    client: SharedModelClient,
) -> None:
    handle = client.model("identity")
    kept = [handle.infer({"x": np.full((1, FEATURES), i, np.float32)})["y"] for i in range(40)]
    for i, out in enumerate(kept):
        assert out[0, 0] == i
    region_bytes = (SHM_DIR / our_segments_of_this_process()[0]).stat().st_size
    assert region_bytes == client.region_bytes  # 40 outputs kept, the region never grew


def our_segments_of_this_process() -> list[str]:
    return [name for name in our_segments() if name.startswith(f"fleetinfer-{os.getpid()}-")]


def test_an_input_larger_than_the_region_grows_it(server: ModelServer) -> None:
    client = SharedModelClient(server.config.socket_path, region_bytes=64 * 1024)
    try:
        x = np.arange(4 * FEATURES, dtype=np.float32).reshape(4, FEATURES)
        np.testing.assert_array_equal(client.model("identity").infer({"x": x})["y"], x)
    finally:
        client.close()


def test_the_version_can_be_chosen_per_request(client: SharedModelClient, repo: Path) -> None:
    client.control("load", "affine", 1)
    x = np.ones((1, 4), np.float32)
    assert client.model("affine").infer({"x": x}, version=1)["y"][0, 0] == 3.0
    assert client.model("affine").infer({"x": x})["y"][0, 0] == 4.0  # newest loaded: 2


@pytest.mark.parametrize(
    ("inputs", "error", "message"),
    [
        ({"z": np.zeros((1, 4), np.float32)}, InvalidInputError, "takes inputs"),
        ({"x": np.zeros((1, 4), np.float64)}, InvalidInputError, "must be float32, got float64"),
        ({"x": np.zeros((1, 5), np.float32)}, InvalidInputError, r"must have shape \[-1, 4\]"),
        ({"x": np.zeros((9, 4), np.float32)}, InvalidInputError, "above max_batch_size 8"),
        ({"x": [[1.0, 2.0, 3.0, 4.0]]}, InvalidInputError, "must be a numpy array"),
        ({"x": np.array([["a"] * 4])}, InvalidInputError, "cannot travel in shared memory"),
    ],
)
def test_a_bad_request_gets_the_same_typed_error_as_inprocess(
    client: SharedModelClient, inputs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        client.model("affine").infer(inputs)
    assert client.model("affine").infer({"x": np.ones((1, 4), np.float32)})["y"].shape == (1, 4)


def test_an_unknown_model_or_version_is_an_unknown_model_error(client: SharedModelClient) -> None:
    with pytest.raises(UnknownModelError, match="'nope' is not loaded"):
        client.model("nope")
    with pytest.raises(UnknownModelError, match="no loaded version 7"):
        client.model("affine").infer({"x": np.ones((1, 4), np.float32)}, version=7)


def test_a_request_above_the_size_limit_is_refused(client: SharedModelClient) -> None:
    x = np.zeros((8, FEATURES * 3), np.float32)  # 6 MiB, the server allows 4 MiB
    with pytest.raises(PayloadTooLargeError, match="above the limit") as info:
        client.model("identity").infer({"x": x})
    assert info.value.limit_bytes == 4 << 20


def test_an_execution_failure_is_an_inference_error_and_the_server_carries_on(
    client: SharedModelClient,
) -> None:
    handle = client.model("fragile")
    with pytest.raises(InferenceError, match="'fragile'"):
        handle.infer({"x": np.ones((2, 3), np.float32)})
    np.testing.assert_array_equal(handle.infer({"x": np.ones((2, 4), np.float32)})["y"], 2.0)


def test_no_server_is_a_server_unavailable_error(short_dir: Path) -> None:
    client = SharedModelClient(short_dir / "nobody.sock", connect_timeout_s=0.2)
    with pytest.raises(ServerUnavailableError, match="fleetinfer serve"):
        client.model("affine")


def test_the_client_reconnects_after_a_server_restart(repo: Path, short_dir: Path) -> None:
    socket_path = short_dir / "restart.sock"
    server = start_server(repo, socket_path)
    client = SharedModelClient(socket_path, connect_timeout_s=10.0)
    x = np.ones((1, 4), np.float32)
    try:
        handle = client.model("affine")
        assert handle.infer({"x": x})["y"][0, 0] == 4.0
        server.stop()
        restarted: list[ModelServer] = []
        timer = threading.Timer(0.3, lambda: restarted.append(start_server(repo, socket_path)))
        timer.start()
        assert handle.infer({"x": x})["y"][0, 0] == 4.0
        timer.join()
        restarted[0].stop()
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize(("preferred", "most_executions"), [("[]", 3), ("[2]", 4), ("[1]", 4)])
def test_queued_requests_are_merged_into_one_execution(
    short_dir: Path, preferred: str, most_executions: int
) -> None:
    """Up to the largest preferred batch size (else max_batch_size): with [2], four requests
    take at least two executions; with [1], exactly four."""
    root = short_dir / "batching"
    affine_repository(root)
    text = (root / "affine" / "config.toml").read_text()
    (root / "affine" / "config.toml").write_text(
        text + f"\n[batching]\nmax_queue_delay_us = 300000\npreferred_batch_sizes = {preferred}\n"
    )
    server = start_server(root, short_dir / "b.sock")
    client = SharedModelClient(server.config.socket_path)
    results: dict[int, np.ndarray] = {}

    def one(i: int) -> None:
        results[i] = client.model("affine").infer({"x": np.full((1, 4), i, np.float32)})["y"]

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(4):
            np.testing.assert_array_equal(results[i], np.full((1, 4), 2 * i + 1, np.float32))
        values = server.stats.get("affine", 1).snapshot()
        assert values["nv_inference_count"] == 4
        assert values["nv_inference_exec_count"] <= most_executions
        assert values["nv_inference_exec_count"] >= {"[]": 1, "[2]": 2, "[1]": 4}[preferred]
    finally:
        client.close()
        server.stop()


def test_socket_and_regions_are_private_to_the_user(
    server: ModelServer, client: SharedModelClient
) -> None:
    client.model("affine").infer({"x": np.ones((1, 4), np.float32)})
    assert stat.S_IMODE(server.config.socket_path.stat().st_mode) == 0o600
    for name in our_segments_of_this_process():
        assert stat.S_IMODE((SHM_DIR / name).stat().st_mode) == 0o600


def test_closing_the_client_unlinks_its_regions(server: ModelServer) -> None:
    client = SharedModelClient(server.config.socket_path)
    client.model("affine").infer({"x": np.ones((1, 4), np.float32)})
    assert our_segments_of_this_process()
    client.close()
    assert not our_segments_of_this_process()


def test_load_unload_and_reload_change_what_is_served(
    client: SharedModelClient, repo: Path
) -> None:
    assert client.control("status") == {"affine": (2,), "fragile": (1,), "identity": (1,)}
    assert client.control("load", "affine", 1)["affine"] == (1, 2)
    assert client.control("unload", "affine", 2)["affine"] == (1,)
    assert client.control("reload", "affine")["affine"] == (2,)
    assert client.control("unload", "fragile") == {"affine": (2,), "identity": (1,)}
    with pytest.raises(UnknownModelError):
        client.model("fragile")


def test_metrics_and_health_are_served_on_localhost(
    server: ModelServer, client: SharedModelClient
) -> None:
    handle = client.model("affine")
    handle.infer({"x": np.ones((2, 4), np.float32)})
    with pytest.raises(InvalidInputError):
        handle.infer({"x": np.ones((1, 5), np.float32)})
    base = f"http://127.0.0.1:{server.metrics_port}"
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    labels = 'model="affine",version="2"'
    assert f"nv_inference_request_success{{{labels}}} 1.0" in text
    assert f"nv_inference_request_failure{{{labels}}} 1.0" in text
    assert f"nv_inference_count{{{labels}}} 2.0" in text
    assert f"nv_inference_exec_count{{{labels}}} 1.0" in text
    assert "nv_inference_compute_infer_duration_us{" in text
    assert "nv_inference_queue_duration_us{" in text
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert urllib.request.urlopen(base + path, timeout=5).status == 200


def test_readiness_fails_once_the_server_stops(repo: Path, short_dir: Path) -> None:
    server = start_server(repo, short_dir / "r.sock")
    server._stopped.set()  # stopping: ready must say so before the HTTP endpoint goes away
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/v2/health/ready")
        assert info.value.code == 503
        info.value.close()
    finally:
        server._stopped.clear()
        server.stop()


def test_a_second_server_on_the_same_socket_is_refused(server: ModelServer, repo: Path) -> None:
    from fleetinfer.errors import ConfigError

    with pytest.raises(ConfigError, match="already listens"):
        start_server(repo, server.config.socket_path, metrics_port=None)


def test_a_model_with_a_broken_config_does_not_load(short_dir: Path) -> None:
    root = short_dir / "broken"
    write_config(root / "m", "other-name")
    from fleetinfer.errors import ModelConfigError

    with pytest.raises(ModelConfigError, match="folder name"):
        start_server(root, short_dir / "x.sock")


def test_a_forked_child_gets_its_own_connection_and_leaves_the_parents_region(
    client: SharedModelClient,
) -> None:
    handle = client.model("affine")
    x = np.ones((1, 4), np.float32)
    handle.infer({"x": x})
    parent_regions = our_segments_of_this_process()
    pid = os.fork()
    if pid == 0:  # the child: infer on a fresh connection, close, exit without pytest's teardown
        code = 0
        try:
            code = 0 if handle.infer({"x": x})["y"][0, 0] == 4.0 else 1
            client.close()
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert our_segments_of_this_process() == parent_regions
    assert handle.infer({"x": x})["y"][0, 0] == 4.0


@pytest.mark.parametrize("where", ["copying outputs", "binding outputs"])
def test_a_server_bug_while_answering_is_reported_and_the_server_carries_on(
    client: SharedModelClient, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    from fleetinfer.errors import FleetinferError
    from fleetinfer.server import executor

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("simulated bug")

    handle = client.model("affine")
    x = np.ones((1, 4), np.float32)
    if where == "copying outputs":  # no direct plan: outputs are copied into the region
        monkeypatch.setattr(executor.ModelExecutor, "_plan", lambda *_, **__: None)
        monkeypatch.setattr(executor, "write_outputs", broken)
    else:
        monkeypatch.setattr(executor.ModelExecutor, "_plan", broken)
    with pytest.raises(FleetinferError, match="simulated bug"):
        handle.infer({"x": x})
    monkeypatch.undo()
    assert handle.infer({"x": x})["y"][0, 0] == 4.0


Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@contextmanager
def sliced_affine(
    repo: Path, socket_path: Path, instances: int, wrap: Callable[[Run], Run]
) -> Iterator[tuple[ModelServer, SharedModelClient]]:
    """A server whose `affine` runs slices of 2 samples, each through `wrap(the real run)`."""
    text = (repo / "affine" / "config.toml").read_text()
    (repo / "affine" / "config.toml").write_text(
        text + "\n[batching]\npreferred_batch_sizes = [2]\n"
    )
    server = start_server(repo, socket_path, instance_count=instances)
    client = SharedModelClient(server.config.socket_path)
    model = server.registry.resolve("affine").model
    model.run = wrap(model.run)  # type: ignore[method-assign,assignment]
    try:
        yield server, client
    finally:
        client.close()
        server.stop()


def test_a_request_above_the_preferred_batch_runs_in_slices_with_the_same_outputs(
    short_dir: Path, repo: Path
) -> None:
    batches = []

    def counted(run: Run) -> Run:
        def counting(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            batches.append(inputs["x"].shape[0])
            return run(inputs)

        return counting

    with sliced_affine(repo, short_dir / "chunks.sock", 1, counted) as (_, client):
        x = np.arange(20, dtype=np.float32).reshape(5, 4)
        np.testing.assert_array_equal(client.model("affine").infer({"x": x})["y"], x * 3 + 1)
        assert batches == [2, 2, 1]  # ONNX Runtime never saw more than the preferred size


def test_a_large_request_is_cut_into_as_few_slices_as_the_limit_allows_of_even_sizes() -> None:
    from fleetinfer.server.session import even_cuts

    def sizes(total: int, parts: int) -> list[int]:
        return [b - a for a, b in itertools.pairwise(even_cuts(total, parts))]

    assert sizes(25, 4) == [7, 6, 6, 6]  # slices of at most 8, shared 13 / 12 by 2 instances
    assert sizes(16, 2) == [8, 8]
    assert sizes(5, 3) == [2, 2, 1]


def test_in_process_a_batch_above_the_preferred_size_runs_in_the_same_slices(repo: Path) -> None:
    text = (repo / "affine" / "config.toml").read_text()
    (repo / "affine" / "config.toml").write_text(
        text + "\n[batching]\npreferred_batch_sizes = [2]\n"
    )
    client = InProcessModelClient(repo)
    model = client.session("affine", None)
    run, batches = model.run, []

    def counted(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batches.append(inputs["x"].shape[0])
        return run(inputs)

    model.run = counted  # type: ignore[method-assign]
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    np.testing.assert_array_equal(client.model("affine").infer({"x": x})["y"], x * 3 + 1)
    assert batches == [2, 2, 1]  # the activation memory of 2 samples, as in the server


def test_the_slices_of_a_large_request_run_side_by_side_on_idle_instances(
    short_dir: Path, repo: Path
) -> None:
    threads = set()

    def slow(run: Run) -> Run:
        def slowly(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            threads.add(threading.get_ident())
            time.sleep(0.05)  # long enough for the idle instance to take a slice
            return run(inputs)

        return slowly

    with sliced_affine(repo, short_dir / "spread.sock", 2, slow) as (server, client):
        x = np.arange(32, dtype=np.float32).reshape(8, 4)
        np.testing.assert_array_equal(client.model("affine").infer({"x": x})["y"], x * 3 + 1)
        assert len(threads) == 2
        assert instances_given_back(server, "affine")


def test_an_instance_that_frees_up_takes_the_slices_left_of_a_request_running_alone(
    short_dir: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain at the end of a queue: a large request that started while every instance was
    busy runs its slices alone, until the other instance is free and helps."""
    slices: list[tuple[float, int]] = []  # (start, thread) of each slice of the large request
    small_done: list[float] = []
    monkeypatch.setattr(ModelExecutor, "_plan", lambda *_, **__: None)  # through `run`

    def timed(run: Run) -> Run:
        def running(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if inputs["x"].shape[0] == 1:  # the small request that holds the other instance
                time.sleep(0.15)
                small_done.append(time.monotonic())
            else:
                slices.append((time.monotonic(), threading.get_ident()))
                time.sleep(0.1)
            return run(inputs)

        return running

    with sliced_affine(repo, short_dir / "steal.sock", 2, timed) as (server, client):
        handle = client.model("affine")
        small = threading.Thread(target=lambda: handle.infer({"x": np.ones((1, 4), np.float32)}))
        small.start()
        time.sleep(0.05)  # the small request holds one instance now
        x = np.arange(32, dtype=np.float32).reshape(8, 4)  # 4 slices of 2, 0.1 s each
        np.testing.assert_array_equal(handle.infer({"x": x})["y"], x * 3 + 1)
        small.join(5)
        assert len(slices) == 4
        before = {thread for start, thread in slices if start < small_done[0]}
        after = {thread for start, thread in slices if start > small_done[0]}
        assert len(before) == 1  # alone at first: no instance was idle
        assert after - before  # then the freed instance took slices too
        assert instances_given_back(server, "affine")


def test_a_failing_slice_fails_its_request_and_the_instances_are_given_back(
    short_dir: Path, repo: Path
) -> None:
    def last_slice_fails(run: Run) -> Run:
        def failing(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            time.sleep(0.02)
            if inputs["x"].shape[0] == 1:
                raise InferenceError("the last slice failed")
            return run(inputs)

        return failing

    with sliced_affine(repo, short_dir / "fail.sock", 2, last_slice_fails) as (server, client):
        with pytest.raises(InferenceError, match="the last slice failed"):
            client.model("affine").infer({"x": np.ones((5, 4), np.float32)})
        assert instances_given_back(server, "affine")
        y = client.model("affine").infer({"x": np.ones((4, 4), np.float32)})["y"]
        np.testing.assert_array_equal(y, 4.0)


def test_every_request_is_counted_out_once_answered_so_spinning_resumes(
    server: ModelServer, client: SharedModelClient
) -> None:
    handle = client.model("affine")
    for _ in range(20):
        handle.infer({"x": np.ones((1, 4), np.float32)})
        with pytest.raises(InvalidInputError):
            handle.infer({"x": np.ones((1, 5), np.float32)})
        with pytest.raises(UnknownModelError):
            client.model("nope")
    with pytest.raises(InferenceError):
        client.model("fragile").infer({"x": np.ones((2, 3), np.float32)})
    assert server.in_flight == 0
    assert not server.others_need_the_gil()


def test_requests_are_answered_with_spinning_off_on_both_ends(repo: Path, short_dir: Path) -> None:
    server = start_server(repo, short_dir / "b.sock", spin_us=0)
    client = SharedModelClient(server.config.socket_path, spin_us=0)
    try:
        x = {"x": np.ones((3, 4), np.float32)}
        expected = ModelClient.from_mode("inprocess", repository=repo).model("affine").infer(x)
        np.testing.assert_array_equal(client.model("affine").infer(x)["y"], expected["y"])
    finally:
        client.close()
        server.stop()
