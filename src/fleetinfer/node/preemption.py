"""Preemption: SIGTERM, SIGINT, or a spot interruption notice all start the same drain.

A spot instance gets a two-minute notice on its instance metadata service. `SpotWatcher` polls
`{endpoint}/latest/meta-data/spot/instance-action` every few seconds with an IMDSv2 session token
(`PUT {endpoint}/latest/api/token`); 404 means no notice, 200 with `{"action": ..., "time": ...}`
means the machine is going away. The endpoint is configurable so tests run a fake one.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from types import FrameType
from typing import Any

from fleetinfer.errors import ConfigError

log = logging.getLogger("fleetinfer.node")

DEFAULT_SPOT_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL_S = 21600
TOKEN_PATH = "/latest/api/token"
NOTICE_PATH = "/latest/meta-data/spot/instance-action"


class DrainSignal:
    """Set once, by whoever asks first; remembers why. `hurry` is set when the grace is cut
    short (a second SIGTERM / SIGINT to the agent)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.reason: str | None = None
        self.hurry = threading.Event()
        self.agent_signals = 0  # SIGTERM / SIGINT received by the agent itself

    def request(self, reason: str, *, routine: bool = False) -> None:
        """Drain for `reason`; a `routine` one (the queue is empty) is logged at info, not as
        a warning."""
        with self._lock:
            if self.reason is None:
                self.reason = reason
                log.log(
                    logging.INFO if routine else logging.WARNING, "draining the node: %s", reason
                )
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._event.wait(timeout_s)


def install_drain_handlers(drain: DrainSignal) -> Callable[[], None]:
    """SIGTERM and SIGINT request a drain, a second one to the agent cuts the grace short;
    returns a function that restores the old handlers."""

    def handle(signum: int, frame: FrameType | None) -> None:
        drain.agent_signals += 1
        if drain.agent_signals == 1:
            drain.request(f"received {signal.Signals(signum).name}")
        elif not drain.hurry.is_set():
            log.warning("second %s: releasing in-flight tasks now", signal.Signals(signum).name)
            drain.request(f"received {signal.Signals(signum).name}")
            drain.hurry.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


class SpotWatcher:
    """Polls the metadata service in a daemon thread and requests a drain on a notice."""

    def __init__(
        self,
        drain: DrainSignal,
        *,
        endpoint: str = DEFAULT_SPOT_ENDPOINT,
        interval_s: float = 5.0,
        request_timeout_s: float = 2.0,
    ) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                f"spot endpoint {endpoint!r} is not an http(s) URL: expected something like "
                f"{DEFAULT_SPOT_ENDPOINT}"
            )
        if not interval_s > 0:
            raise ConfigError(f"spot poll interval must be above 0 s, got {interval_s!r}")
        self.drain = drain
        self.endpoint = endpoint.rstrip("/")
        self.interval_s = interval_s
        self.request_timeout_s = request_timeout_s
        self._token: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetinfer-spot", daemon=True)
        self._warned = False

    def start(self) -> SpotWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set() and not self.drain.is_set():
            notice = self._poll_quietly()
            if notice is not None:
                self.drain.request(notice)
                return
            self._stop.wait(self.interval_s)

    def _poll_quietly(self) -> str | None:
        try:
            return self.poll()
        except (OSError, ValueError) as exc:
            if not self._warned:
                log.warning("spot watcher cannot reach %s, still trying: %s", self.endpoint, exc)
                self._warned = True
            return None

    def poll(self) -> str | None:
        """One check: a reason string if an interruption is scheduled, else None."""
        try:
            body = self._get_notice(self._session_token())
        except urllib.error.HTTPError as exc:
            if exc.code != 401:
                raise
            exc.close()
            self._token = None  # expired session: one fresh token, one more try
            body = self._get_notice(self._session_token())
        return None if body is None else describe_notice(body)

    def _session_token(self) -> str:
        if self._token is None:
            request = urllib.request.Request(
                self.endpoint + TOKEN_PATH,
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)},
            )
            with urllib.request.urlopen(request, timeout=self.request_timeout_s) as response:
                self._token = response.read().decode("utf-8").strip()
        return self._token

    def _get_notice(self, token: str) -> bytes | None:
        request = urllib.request.Request(
            self.endpoint + NOTICE_PATH, headers={"X-aws-ec2-metadata-token": token}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.request_timeout_s) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                exc.close()
                return None
            raise


def describe_notice(body: bytes) -> str:
    """`spot interruption notice: terminate at 2026-…` from the notice's JSON body."""
    try:
        notice: Any = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested too deep: shown as it came
        return f"spot interruption notice: {body[:100]!r}"
    if not isinstance(notice, dict):
        return f"spot interruption notice: {notice!r:.100}"
    return f"spot interruption notice: {notice.get('action', '?')} at {notice.get('time', '?')}"
