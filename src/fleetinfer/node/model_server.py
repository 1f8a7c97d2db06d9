"""The node's model server as a supervised child process (`fleetinfer serve`).

In `shared` client mode the node agent starts one model server before its workers, on a Unix
socket private to the node, and exports its path to the workers as `FLEETINFER_SOCKET`. A server
that dies is restarted (workers' clients reconnect and retry an idempotent request once); at the
end of the run it is stopped after the workers.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fleetinfer.errors import ConfigError, ServerUnavailableError

log = logging.getLogger("fleetinfer.node")

SOCKET_ENV = "FLEETINFER_SOCKET"


@dataclass(frozen=True, slots=True)
class ServerOptions:
    models: Path
    intra_op_threads: int | None = None
    instance_count: int | None = None  # None: each model's config.toml decides
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0
    env: dict[str, str] | None = None  # added to the server's environment (device visibility)
    cpus: frozenset[int] | None = None  # pin the server to these cores (one CPU "device")


class ModelServerProcess:
    """Starts, watches, restarts and stops one `fleetinfer serve` process."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self._dir = Path(tempfile.mkdtemp(prefix="fleetinfer-node-"))
        os.chmod(self._dir, 0o700)
        self.socket_path = self._dir / "models.sock"
        self.log_path = self._dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.metrics_port: int | None = None  # its /metrics on 127.0.0.1, read from its ready line

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def command(self) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "fleetinfer",
            "serve",
            "--models",
            str(self.options.models),
        ]
        command += ["--socket", str(self.socket_path), "--metrics-port", "0"]
        if self.options.intra_op_threads is not None:
            command += ["--intra-op-threads", str(self.options.intra_op_threads)]
        if self.options.instance_count is not None:
            command += ["--instances", str(self.options.instance_count)]
        return command

    def start(self) -> ModelServerProcess:
        """Start the server and wait for its ready line; a server that cannot start is a
        `ConfigError` carrying its error output."""
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.command(), stdout=subprocess.PIPE, stderr=log_file, env=self._environment()
            )
        if self.options.cpus is not None:  # before it loads models: its threads inherit it
            os.sched_setaffinity(self.process.pid, self.options.cpus)
        self._wait_ready(self.process)
        log.info("model server %d serves %s", self.process.pid, self.socket_path)
        return self

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
        """Restart the server if it died (called from the agent's watch loop)."""
        if self.process is None or self.process.poll() is None:
            return
        log.warning("model server exited with %s; restarting", self.process.returncode)
        self.restarts += 1
        try:
            self.start()
        except ConfigError as exc:
            raise ServerUnavailableError(f"the model server cannot be restarted: {exc}") from exc

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.options.stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None and process.stdout is not None:
            process.stdout.close()

    def cleanup(self) -> None:
        """Remove the node's private folder (socket and server log)."""
        self.stop()
        self.socket_path.unlink(missing_ok=True)
        self.log_path.unlink(missing_ok=True)
        (self._dir / "device-counter").unlink(missing_ok=True)  # node/placement.py's
        if self._dir.exists() and not any(self._dir.iterdir()):
            self._dir.rmdir()


def _is_ready(line: bytes) -> bool:
    try:
        event = json.loads(line)
    except ValueError:
        return False
    return isinstance(event, dict) and event.get("event") == "ready"


def _metrics_port(line: bytes) -> int | None:
    port = json.loads(line).get("metrics_port")
    return port if isinstance(port, int) else None
