"""Every request of the shared client has a reply deadline, on the C and the Python path.

A frozen server (SIGSTOP stands in for a stuck native call) must not hold a worker forever: the
call fails with `ModelDeadlineError` (transient), the connection is dropped, and the next call,
once the server answers again, works. A connection's first request (attach) has a deadline too:
a server that accepts connections but never answers does not block a client indefinitely.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fleetinfer.client import SharedModelClient
from fleetinfer.deadlines import DEFAULT_FLOOR_S, ModelDeadlines
from fleetinfer.errors import ConfigError, ModelDeadlineError
from fleetinfer.server.channel import ATTACH_TIMEOUT_S, Channel
from tests.faults.node import freeze
from tests.helpers.tiny_models import affine_repository

pytestmark = pytest.mark.usefixtures("lanes")  # the C and the Python request paths

ONE_ROW = {"x": np.ones((1, 4), np.float32)}


@pytest.fixture
def server(short_dir: Path, reaper: list[int]) -> Iterator[subprocess.Popen[str]]:
    repo = affine_repository(short_dir / "repo")
    command = [sys.executable, "-m", "fleetinfer", "serve", "--models", str(repo)]
    command += ["--socket", str(short_dir / "s.sock"), "--metrics-port", "-1"]
    with (short_dir / "server.log").open("w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    reaper.append(proc.pid)
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["event"] == "ready"
    yield proc
    os.kill(proc.pid, signal.SIGCONT)
    proc.terminate()
    proc.wait(30)
    proc.stdout.close()


def test_a_call_to_a_frozen_server_fails_at_its_deadline_and_the_next_call_works(
    server: subprocess.Popen[str], short_dir: Path, lanes: str
) -> None:
    client = SharedModelClient(short_dir / "s.sock", deadlines=ModelDeadlines.parse("affine=0.5"))
    try:
        for _ in range(4):  # the third and later calls are repeated calls (the C lane's)
            client.infer("affine", ONE_ROW)
        channel = client._channel()
        if lanes == "c":
            assert channel._lane is not None
            assert channel._lane.kept() >= 1
        freeze(server.pid)
        started = time.monotonic()
        with pytest.raises(ModelDeadlineError, match=r"deadline of 0\.5 s"):
            client.infer("affine", ONE_ROW)
        waited_s = time.monotonic() - started
        os.kill(server.pid, signal.SIGCONT)
        assert 0.5 <= waited_s < 5.0
        assert client._channel() is not channel  # dropped: a late reply would be out of step
        assert client.infer("affine", ONE_ROW)["y"].shape == (1, 4)
    finally:
        client.close()


def test_the_first_request_of_a_connection_has_a_reply_deadline(short_dir: Path) -> None:
    """A server that accepts but never answers (issue 20): the attach fails, it does not hang."""
    path = short_dir / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)  # connections wait in the backlog; nobody ever answers them
    client = SharedModelClient(path, attach_timeout_s=0.3, connect_timeout_s=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(ModelDeadlineError):
            client.model("affine")
        assert time.monotonic() - started < 5.0
        with pytest.raises(ModelDeadlineError):
            Channel.connect(path, region_bytes=1 << 16, max_region_bytes=1 << 20,
                            attach_timeout_s=0.3)  # fmt: skip
    finally:
        client.close()
        listener.close()


def test_deadlines_are_fixed_per_model_or_derived_from_the_slowest_call() -> None:
    deadlines = ModelDeadlines.parse("cdnet=20, affine=2.5")
    assert deadlines.deadline_s("cdnet") == 20
    assert deadlines.deadline_s("affine") == 2.5
    assert deadlines.deadline_s("other") == DEFAULT_FLOOR_S  # derived, no call seen: the floor
    deadlines.observe("other", 4.0)  # a slow call (queued behind the other workers' calls)
    assert deadlines.deadline_s("other") == 80.0  # 20 × 4 s
    assert ModelDeadlines.parse("60,cdnet=5").deadline_s("other") == 60


def test_a_connection_waits_for_its_attach_no_longer_than_the_configured_deadlines() -> None:
    """A reconnection to a hung server fails when a model call would, not 10 s later."""
    assert ModelDeadlines.parse("2").longest_fixed_s() == 2
    assert ModelDeadlines.parse("cdnet=20,3").longest_fixed_s() == 20
    assert ModelDeadlines.parse("cdnet=5").longest_fixed_s() is None  # others are derived
    assert ModelDeadlines.parse(None).longest_fixed_s() is None
    short = SharedModelClient("/nonexistent.sock", deadlines=ModelDeadlines.parse("2"))
    derived = SharedModelClient("/nonexistent.sock")
    assert (short.attach_timeout_s, derived.attach_timeout_s) == (2, ATTACH_TIMEOUT_S)


@pytest.mark.parametrize("text", ["cdnet=", "abc", "cdnet=-1", "0", "cdnet=nan"])
def test_a_malformed_deadline_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="deadline"):
        ModelDeadlines.parse(text)
