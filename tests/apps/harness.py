"""Run `fleetinfer run … --json` as a real process and talk to it (ready line, /healthz, exit)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


class NodeProcess:
    """One node agent process; its stdout carries JSON lines (ready, stopped)."""

    def __init__(self, target: str, queue: str, results: str, *args: str, log_path: Path) -> None:
        command = [sys.executable, "-m", "fleetinfer", "run", target, "--queue", queue]
        command += ["--results", results, "--json", "--metrics-port", "0", *args]
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=self._log, env=_env()
        )
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.log_path = log_path

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(json.loads(raw))

    def event(self, name: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """The first stdout line whose event is `name`, waiting for it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.lines:
                if line.get("event") == name:
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no {name!r} event from the node; log:\n{self.log()}")

    def health(self) -> dict[str, Any]:
        url = self.event("ready")["metrics_url"] + "/healthz"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 503 while draining still has a JSON body
            body = json.loads(exc.read())
            exc.close()
        return body

    def metrics(self) -> str:
        url = self.event("ready")["metrics_url"] + "/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
        return text

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int:
        code = self.proc.wait(timeout_s)
        self._reader.join(5)
        return code

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def wait_for(condition: Any, timeout_s: float, what: str, pause_s: float = 0.05) -> None:
    """Poll `condition()` until true; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(pause_s)
