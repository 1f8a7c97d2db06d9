"""Services for the suite. `make test` makes Redis and PostgreSQL answer (scripts/services.sh);
this file starts a moto SQS server for the session. A missing service fails the tests that need it
loudly: nothing is skipped silently."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

REDIS_URL = os.environ.get("FLEETINFER_TEST_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "FLEETINFER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real moto server over HTTP on a free local port, for the whole session (moto with a
    cheaper clock: tests/helpers/moto_server.py says why)."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, 30.0)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(autouse=True, scope="session")
def _aws_test_credentials() -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def unique_name() -> str:
    """A name no other test uses: queues, streams and tables are isolated by it."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return POSTGRES_URL


@pytest.fixture(params=["c", "python"])
def lanes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test that uses it runs twice: with the compiled request paths (`_native.c`), which
    must be built, and with their pure-Python twins (`FLEETINFER_NATIVE=0`). Servers and
    clients made after it, subprocesses too, take the setting."""
    from fleetinfer.server.native import NATIVE_ENV, compiled

    if request.param == "c":
        assert compiled is not None, (
            "fleetinfer.server._native is not built: `make install-dev` builds it (it needs a C "
            "compiler and the Python headers)"
        )
    monkeypatch.setenv(NATIVE_ENV, "1" if request.param == "c" else "0")
    return str(request.param)
