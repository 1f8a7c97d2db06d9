"""Fixtures of the fault-injection suite: queues on both backends, nodes as real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetinfer.queue import open_broker

VISIBILITY_S = 120  # far longer than any test: a message seen again was released, not expired


@pytest.fixture(params=["sqlite", "redis"])
def queue_url(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, unique_name: str
) -> Iterator[str]:
    """The node's queue, on the embedded SQLite backend and on Redis (a test may pick one with
    `indirect`)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/queue.db?visibility_timeout_s={VISIBILITY_S}"
        return
    url = f"{redis_url}?queue={unique_name}&visibility_timeout_s={VISIBILITY_S}"
    yield url
    with open_broker(url) as broker:
        broker.purge()


@pytest.fixture
def results_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/results.db"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path (Unix socket paths are limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="fi-"))
    yield path
    for child in sorted(path.rglob("*"), reverse=True):
        if child.is_dir():
            child.rmdir()
        else:
            child.unlink()
    path.rmdir()


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    """Pids a test adds here are SIGKILLed (and SIGCONTed) at its end if still alive."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        for signum in (signal.SIGKILL, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
