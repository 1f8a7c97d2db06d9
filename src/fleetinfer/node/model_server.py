"""The node's model server as a supervised child process (`fleetinfer serve`).

In `shared` client mode the node agent starts one model server before its workers, on a Unix
socket private to the node, and exports its path to the workers as `FLEETINFER_SOCKET`. A server
that dies is restarted (workers' clients reconnect and retry an idempotent request once); at the
end of the run it is stopped after the workers.

A server that lives but does not answer (a stuck native call, a stopped or swapped-out process)
is found by a probe: every `probe_interval_s` a `status` request with a deadline of
`probe_timeout_s`; after `probe_failures` failed probes in a row the server is killed and started
again. Meanwhile the workers' model calls fail at their own deadline (`fleetinfer.deadlines`), so
their tasks are released, not held. The server runs as `python -m fleetinfer.node.server_child`:
a SIGTERM / SIGINT it gets asks the agent to drain (its stdout), and it stops when the agent
closes its stdin. Its folder is named `fleetinfer-node-<agent pid>-*`, so that a later node can
tell a dead node's leftovers from a live one's (`leftovers.py`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fleetinfer.errors import ConfigError, FleetinferError, ServerUnavailableError
from fleetinfer.node.signals import drain_signals_blocked

log = logging.getLogger("fleetinfer.node")

SOCKET_ENV = "FLEETINFER_SOCKET"
NODE_DIR_PREFIX = "fleetinfer-node-"
PROBE_REGION_BYTES = 64 << 10


@dataclass(frozen=True, slots=True)
class ServerOptions:
    models: Path
    intra_op_threads: int | None = None
    instance_count: int | None = None  # None: each model's config.toml decides
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0
    probe_interval_s: float = 2.0
    probe_timeout_s: float = 5.0
    probe_failures: int = 3  # failed probes in a row before the server is restarted

    env: dict[str, str] | None = None  # added to the server's environment (device visibility)
    cpus: frozenset[int] | None = None  # pin the server to these cores (one CPU "device")

    def __post_init__(self) -> None:
        if self.probe_failures < 1 or not self.probe_timeout_s > 0:
            raise ConfigError(
                f"server probes need probe_failures >= 1 and probe_timeout_s > 0, got "
                f"{self.probe_failures!r} and {self.probe_timeout_s!r}"
            )


class ModelServerProcess:
    """Starts, watches, restarts and stops one `fleetinfer serve` process."""

    def __init__(
        self, options: ServerOptions, *, on_signal: Callable[[str], None] | None = None
    ) -> None:
        self.options = options
        self._dir = Path(tempfile.mkdtemp(prefix=f"{NODE_DIR_PREFIX}{os.getpid()}-"))
        os.chmod(self._dir, 0o700)
        self.socket_path = self._dir / "models.sock"
        self.log_path = self._dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.metrics_port: int | None = None  # its /metrics on 127.0.0.1, read from its ready line
        self._on_signal = on_signal
        self._probe: ServerProbe | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "fleetinfer.node.server_child"]
        command += ["--models", str(self.options.models), "--socket", str(self.socket_path)]
        command += ["--metrics-port", "0"]
        if self.options.intra_op_threads is not None:
            command += ["--intra-op-threads", str(self.options.intra_op_threads)]
        if self.options.instance_count is not None:
            command += ["--instances", str(self.options.instance_count)]
        return command

    def start(self) -> ModelServerProcess:
        """Start the server and wait for its ready line; a server that cannot start is a
        `ConfigError` carrying its error output."""
        with self.log_path.open("ab") as log_file, drain_signals_blocked():
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=self._environment(),
            )
        if self.options.cpus is not None:  # before it loads models: its threads inherit it
            os.sched_setaffinity(self.process.pid, self.options.cpus)
        self._wait_ready(self.process)
        assert self.process.stdout is not None
        threading.Thread(
            target=self._read_signals, args=(self.process.stdout,), daemon=True
        ).start()
        log.info("model server %d serves %s", self.process.pid, self.socket_path)
        return self

    def _read_signals(self, stdout: IO[bytes]) -> None:
        """After the ready line: the server's word that it got a SIGTERM / SIGINT."""
        with contextlib.suppress(OSError, ValueError):
            for line in stdout:
                if _event(line) == "signal" and self._on_signal is not None:
                    self._on_signal(f"{json.loads(line).get('signal')} to the model server")

    def start_probe(self) -> None:
        """Probe the server from now on (`poll` restarts it after failed probes in a row)."""
        self._probe = ServerProbe(self.socket_path, self.options).start()

    @property
    def answering(self) -> bool:
        """Whether the server answered its last probe (True while none has run)."""
        return self._probe is None or self._probe.failures == 0

    def _environment(self) -> dict[str, str] | None:
        return None if not self.options.env else {**os.environ, **self.options.env}

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        deadline = time.monotonic() + self.options.start_timeout_s
        while time.monotonic() < deadline:
            readable, _, _ = select.select([process.stdout], [], [], 0.2)
            if readable:
                line = process.stdout.readline()
                if not line:
                    break
                if _is_ready(line):
                    self.metrics_port = _metrics_port(line)
                    return
            elif process.poll() is not None:
                break
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        errors = lines[-1][-600:] if lines else "no error output"  # the error, not its traceback
        self.stop()
        raise ConfigError(
            f"the model server for {self.options.models} did not become ready: {errors}"
        )

    @property
    def metrics_url(self) -> str | None:
        """Where the server's `nv_inference_*` metrics are scraped (the node merges them)."""
        port = self.metrics_port
        return None if port is None else f"http://127.0.0.1:{port}/metrics"

    def poll(self) -> None:
        """Restart the server if it died, or if it stopped answering its probes (called from
        the agent's watch loop)."""
        if self.process is None:
            return
        if self.process.poll() is not None:
            log.warning("model server exited with %s; restarting", self.process.returncode)
        elif self._probe is not None and self._probe.failures >= self.options.probe_failures:
            log.error(
                "model server %d did not answer %d probes in a row (%s); restarting it",
                self.process.pid, self._probe.failures, self._probe.last_error,
            )  # fmt: skip
            self.stop(timeout_s=0.0)
        else:
            return
        self.restarts += 1
        try:
            self.start()
        except ConfigError as exc:
            raise ServerUnavailableError(f"the model server cannot be restarted: {exc}") from exc
        if self._probe is not None:
            self._probe.failures = 0

    def stop(self, timeout_s: float | None = None) -> None:
        """Close its stdin (it stops), wait up to `timeout_s` (default: the options'), kill."""
        process = self.process
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(self.options.stop_timeout_s if timeout_s is None else timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            with contextlib.suppress(OSError, ValueError):  # the reader thread may hold it
                process.stdout.close()

    def cleanup(self) -> None:
        """Stop probing and serving; remove the node's private folder (socket and server log)."""
        if self._probe is not None:
            self._probe.stop()
        self.stop()
        self.socket_path.unlink(missing_ok=True)
        self.log_path.unlink(missing_ok=True)
        (self._dir / "device-counter").unlink(missing_ok=True)  # node/placement.py's
        if self._dir.exists() and not any(self._dir.iterdir()):
            self._dir.rmdir()


class ServerProbe:
    """A thread that asks the server for its `status` every `probe_interval_s`; `failures` is
    the number of probes in a row that failed (0: the last one was answered)."""

    def __init__(self, socket_path: Path, options: ServerOptions) -> None:
        self.socket_path, self.options = socket_path, options
        self.failures = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetinfer-probe", daemon=True)

    def start(self) -> ServerProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.options.probe_timeout_s * 2 + 1)

    def _run(self) -> None:
        from fleetinfer.client import SharedModelClient

        timeout_s = self.options.probe_timeout_s
        client: SharedModelClient | None = None
        while not self._stop.wait(self.options.probe_interval_s):
            if client is None:
                client = SharedModelClient(
                    self.socket_path, connect_timeout_s=timeout_s, spin_us=0,
                    region_bytes=PROBE_REGION_BYTES, attach_timeout_s=timeout_s,
                    request_timeout_s=timeout_s,
                )  # fmt: skip
            try:
                client.control("status")
            except (FleetinferError, OSError) as exc:
                self.failures += 1
                self.last_error = str(exc)[:300]
                client.close()
                client = None
            else:
                self.failures = 0
        if client is not None:
            client.close()


def _event(line: bytes) -> str | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return str(event.get("event")) if isinstance(event, dict) else None


def _is_ready(line: bytes) -> bool:
    return _event(line) == "ready"


def _metrics_port(line: bytes) -> int | None:
    port = json.loads(line).get("metrics_port")
    return port if isinstance(port, int) else None
