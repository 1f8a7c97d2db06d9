"""The drain signal and the spot watcher against a fake IMDSv2 endpoint (tokens, 404, 401)."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fleetinfer.errors import ConfigError
from fleetinfer.node.preemption import (
    DrainSignal,
    SpotWatcher,
    describe_notice,
    install_drain_handlers,
)


class FakeImds:
    """Issues numbered tokens; `valid` is the one token it accepts; `notice` the body to serve."""

    def __init__(self) -> None:
        self.tokens_issued = 0
        self.valid = ""
        self.notice: bytes | None = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                assert self.headers["X-aws-ec2-metadata-token-ttl-seconds"] == "21600"
                fake.tokens_issued += 1
                fake.valid = f"token-{fake.tokens_issued}"
                self._reply(200, fake.valid.encode())

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") != fake.valid:
                    self._reply(401, b"")
                elif fake.notice is None:
                    self._reply(404, b"")
                else:
                    self._reply(200, fake.notice)

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    fake = FakeImds()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def test_no_notice_is_none_and_the_token_is_reused(imds: FakeImds) -> None:
    watcher = SpotWatcher(DrainSignal(), endpoint=imds.endpoint)
    assert watcher.poll() is None
    assert watcher.poll() is None
    assert imds.tokens_issued == 1


def test_an_expired_token_is_replaced_once(imds: FakeImds) -> None:
    watcher = SpotWatcher(DrainSignal(), endpoint=imds.endpoint)
    watcher.poll()
    imds.valid = "rotated-away"
    imds.notice = json.dumps({"action": "stop", "time": "T"}).encode()
    assert watcher.poll() == "spot interruption notice: stop at T"
    assert imds.tokens_issued == 2


def test_the_watcher_thread_requests_a_drain_on_a_notice(imds: FakeImds) -> None:
    drain = DrainSignal()
    watcher = SpotWatcher(drain, endpoint=imds.endpoint, interval_s=0.05).start()
    try:
        assert not drain.wait(0.2)
        imds.notice = b'{"action": "terminate", "time": "2026-01-01T00:00:00Z"}'
        assert drain.wait(5.0)
    finally:
        watcher.stop()
    assert drain.reason == "spot interruption notice: terminate at 2026-01-01T00:00:00Z"


def test_an_unreachable_endpoint_is_retried_quietly() -> None:
    drain = DrainSignal()
    watcher = SpotWatcher(drain, endpoint="http://127.0.0.1:9", interval_s=0.05).start()
    assert not drain.wait(0.3)
    watcher.stop()


@pytest.mark.parametrize(("endpoint", "interval_s"), [("169.254.169.254", 5.0), ("http://x", 0.0)])
def test_bad_watcher_settings_are_config_errors(endpoint: str, interval_s: float) -> None:
    with pytest.raises(ConfigError):
        SpotWatcher(DrainSignal(), endpoint=endpoint, interval_s=interval_s)


def test_the_first_drain_reason_wins() -> None:
    drain = DrainSignal()
    drain.request("received SIGTERM")
    drain.request("spot interruption notice")
    assert drain.is_set()
    assert drain.reason == "received SIGTERM"


def test_sigterm_requests_a_drain_and_the_old_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    drain = DrainSignal()
    restore = install_drain_handlers(drain)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert drain.wait(2.0)
    finally:
        restore()
    assert drain.reason == "received SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before


def test_notices_that_are_not_json_objects_are_still_described() -> None:
    assert describe_notice(b"garbage") == "spot interruption notice: b'garbage'"
    assert describe_notice(b"[1]") == "spot interruption notice: [1]"
