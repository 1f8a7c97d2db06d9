"""Preemption: SIGTERM or a spot notice drains the node; nothing waits out a visibility timeout."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fleetinfer.queue import open_broker
from fleetinfer.queue.base import Broker
from fleetinfer.results import TaskStatus, open_store
from fleetinfer.task import send_tasks
from tests.apps.harness import NodeProcess, wait_for

VISIBILITY_S = 120  # far longer than any test: a message seen again was released, not expired


@pytest.fixture
def urls(tmp_path: Path) -> tuple[str, str]:
    return (
        f"sqlite:///{tmp_path}/q.db?visibility_timeout_s={VISIBILITY_S}",
        f"sqlite:///{tmp_path}/r.db",
    )


@pytest.fixture(params=["fresh", "preload"])
def start(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """Workers started as fresh interpreters (`--no-preload`), or forked from the zygote."""
    return ("--preload",) if request.param == "preload" else ("--no-preload",)


def sigterm_with_two_in_flight(
    broker: Broker,
    urls: tuple[str, str],
    tmp_path: Path,
    *,
    grace_s: float,
    start: tuple[str, ...],
    exit_code: int = 0,
) -> tuple[NodeProcess, float]:
    """Run a 2-worker node, SIGTERM it once two tasks are in flight; it must exit with
    `exit_code` (0: a clean drain) within the grace period (plus slack). Returns the node and
    the seconds from SIGTERM to exit."""
    node = NodeProcess("tests.apps.jobs:app", *urls, "--workers", "2", "--grace-s", str(grace_s),
                       *start, log_path=tmp_path / "node.log")  # fmt: skip
    try:
        wait_for(lambda: broker.stats().in_flight == 2, 60, "two tasks in flight")
        sent_at = time.monotonic()
        node.terminate()
        assert node.wait(grace_s + 8) == exit_code, node.log()
        return node, time.monotonic() - sent_at
    finally:
        node.close()


def test_sigterm_lets_in_flight_tasks_finish_within_the_grace_period(
    urls: tuple[str, str], tmp_path: Path, start: tuple[str, ...]
) -> None:
    queue_url, results_url = urls
    with open_broker(queue_url) as broker, open_store(results_url) as store:
        send_tasks(broker, "nap", [{"s": 1.5}] * 4)
        node, took_s = sigterm_with_two_in_flight(broker, urls, tmp_path, grace_s=20, start=start)
        stats = broker.stats()
        finished = store.count(TaskStatus.SUCCEEDED)
        assert stats.in_flight == 0
        assert finished >= 2
        assert finished + stats.visible == 4
        assert took_s < 20
        assert node.event("stopped")["reason"] == "received SIGTERM"


def test_sigterm_releases_tasks_that_outlast_the_grace_period_at_once(
    urls: tuple[str, str], tmp_path: Path, start: tuple[str, ...]
) -> None:
    queue_url, results_url = urls
    with open_broker(queue_url) as broker, open_store(results_url) as store:
        send_tasks(broker, "nap", [{"s": 60}] * 2)
        node, took_s = sigterm_with_two_in_flight(
            broker, urls, tmp_path, grace_s=2, start=start, exit_code=7
        )
        assert took_s < 2.0 + 1.0  # the grace period, plus the time to exit a process
        stats = broker.stats()
        assert (stats.visible, stats.in_flight) == (2, 0)
        assert [m.receive_count for m in broker.receive(max_messages=2)] == [2, 2]  # 2nd delivery
        assert store.count() == 0
        assert node.event("stopped")["outcomes"]["abandoned"] == 2


class _FakeMetadata:
    """IMDSv2: PUT a token, then GET the notice with it; 404 until `notice()` is called."""

    def __init__(self) -> None:
        self.token_requests = 0
        self.notice_requests = 0
        self._notice: dict[str, str] | None = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def notice(self) -> None:
        self._notice = {"action": "terminate", "time": "2026-11-23T12:00:00Z"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                ok = (
                    self.path == "/latest/api/token"
                    and self.headers["X-aws-ec2-metadata-token-ttl-seconds"]
                )
                fake.token_requests += 1
                self._reply(200 if ok else 400, b"secret-token")

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") != "secret-token":
                    self._reply(401, b"")
                    return
                fake.notice_requests += 1
                if self.path != "/latest/meta-data/spot/instance-action" or fake._notice is None:
                    self._reply(404, b"not found")
                    return
                self._reply(200, json.dumps(fake._notice).encode())

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def metadata() -> Iterator[_FakeMetadata]:
    fake = _FakeMetadata()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def test_a_spot_notice_drains_the_node_like_sigterm(
    urls: tuple[str, str], tmp_path: Path, metadata: _FakeMetadata
) -> None:
    queue_url, results_url = urls
    with open_broker(queue_url) as broker, open_store(results_url) as store:
        send_tasks(broker, "nap", [{"s": 1.0}] * 2)
        node = NodeProcess("tests.apps.jobs:app", queue_url, results_url, "--workers", "2",
                           "--grace-s", "20", "--spot-endpoint", metadata.endpoint,
                           "--spot-interval-s", "0.1", log_path=tmp_path / "node.log")  # fmt: skip
        try:
            wait_for(lambda: broker.stats().in_flight == 2, 60, "two tasks in flight")
            assert node.health()["status"] == "ok"
            wait_for(lambda: metadata.notice_requests >= 2, 10, "the watcher to poll")
            metadata.notice()
            assert node.wait(20) == 0, node.log()
        finally:
            node.close()
        stopped = node.event("stopped")
        assert stopped["reason"] == "spot interruption notice: terminate at 2026-11-23T12:00:00Z"
        assert store.count(TaskStatus.SUCCEEDED) == 2
        assert broker.stats().pending == 0
        assert metadata.token_requests == 1
