"""The `triton` mode's server: `triton_server.py` under the PyTriton venv's python, or why not.

PyTriton's bundled tritonserver runs its Python stub only under Debian's /usr/bin/python3.11, so
the server runs under that venv's python (`scripts/triton-venv.sh` builds `.venv-triton`), never
under ours. `triton_unavailable()` names exactly what is missing; `TritonServer` starts it on free
ports, waits for its ready file, and stops it (and its tritonserver) with SIGTERM. A start that
fails is stopped and tried once more before it is an error: on a busy machine PyTriton now and
then fails to load a model (its stub cannot reach the handshake socket: `ConnectionRefusedError`
in `get_config_from_handshake_server`, then "load failed for model"), or the Python backend hangs
loading one (seen once in 12 starts); the next start succeeds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import BinaryIO

from fleetinfer.bench.measure import child_pids, process_cpu_s

SERVER_SCRIPT = Path(__file__).resolve().with_name("triton_server.py")
VENV_HINT = (
    "build it with `bash scripts/triton-venv.sh` (Debian's /usr/bin/python3.11 venv with "
    "nvidia-pytriton, onnxruntime, numpy) and pass --pytriton-python .venv-triton/bin/python"
)
log = logging.getLogger(__name__)


def triton_unavailable(python: Path | None) -> str | None:
    """Why Triton cannot run with `python`, or None when it can import PyTriton and ORT."""
    if python is None:
        return f"no --pytriton-python given: {VENV_HINT}"
    if not python.is_file():
        return f"--pytriton-python {python} does not exist: {VENV_HINT}"
    try:
        probe = subprocess.run(
            [str(python), "-c", "import pytriton.triton, onnxruntime, numpy"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"--pytriton-python {python} cannot run: {exc}"
    if probe.returncode != 0:
        return (
            f"{python} cannot import pytriton, onnxruntime and numpy: {probe.stderr.strip()[-400:]}"
        )
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class TritonServerError(Exception):
    """Triton did not become ready; the message carries the end of its log."""


class TritonServer:
    """One PyTriton server for a model repository: `instances` ORT sessions of `threads` threads
    per model."""

    def __init__(
        self,
        python: Path,
        models: Path,
        *,
        threads: int,
        instances: int = 1,
        start_timeout_s: float = 180.0,
        start_attempts: int = 2,
    ) -> None:
        self.python = python.absolute()  # not resolve(): a venv python is a symlink to keep
        self.models, self.threads, self.instances = models, threads, instances
        self.start_timeout_s, self.start_attempts = start_timeout_s, start_attempts
        self._new_workspace()
        self.process: subprocess.Popen[bytes] | None = None
        self.start_s = 0.0
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        return [
            str(self.python), str(SERVER_SCRIPT), "--models", str(self.models.resolve()),
            "--threads", str(self.threads), "--instances", str(self.instances),
            "--http-port", str(self.http_port),
            "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
            "--ready-file", str(self.ready_path),
        ]  # fmt: skip

    def __enter__(self) -> TritonServer:
        started = time.monotonic()
        for attempt in range(1, self.start_attempts + 1):
            try:
                self._start()
                break
            except TritonServerError as exc:
                if attempt == self.start_attempts:
                    raise TritonServerError(
                        f"{exc} (start attempt {attempt} of {attempt})"
                    ) from exc
                log.warning("Triton did not start, starting it again: %s", exc)
                self._new_workspace()  # `stop` removed the last one; fresh ports too
        self.start_s = time.monotonic() - started
        return self

    def _new_workspace(self) -> None:
        self.http_port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="fleetinfer-triton-"))
        self.log_path = self._dir / "triton.log"
        self.ready_path = self._dir / "ready.json"  # not a stdout line: tritonserver logs there

    def _start(self) -> None:
        output = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=output, cwd=self._dir
        )
        self._reader = threading.Thread(
            target=self._read_stdout,
            args=(self.process, output),
            name="triton-stdout",
            daemon=True,
        )
        self._reader.start()
        try:
            self._wait_ready(self.process)
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cpu_s(self) -> float:
        """CPU seconds so far of the server and every process under it (/proc)."""
        assert self.process is not None
        total = 0.0
        for pid in [self.process.pid, *child_pids(self.process.pid)]:
            with contextlib.suppress(OSError):
                total += process_cpu_s(pid)
        return total

    def _read_stdout(self, process: subprocess.Popen[bytes], log: BinaryIO) -> None:
        """Copy the server's stdout into its log, so that the pipe never fills."""
        assert process.stdout is not None
        with log:
            for line in process.stdout:
                log.write(line)
                log.flush()

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while not _is_ready(self.ready_path):
            if process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        else:
            return
        code = process.poll()
        if code is not None and self._reader is not None:
            self._reader.join(timeout=5.0)  # until its last output is in the log
        ended = f"it exited with code {code}" if code is not None else "it did not answer"
        tail = self.log_path.read_text(errors="replace").strip()[-800:]
        raise TritonServerError(
            f"the Triton server ({' '.join(self.command()[:2])}) was not ready within "
            f"{self.start_timeout_s:g} s ({ended}); its log ends: {tail}"
        )

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5.0)
        if process.stdout is not None:
            process.stdout.close()
        self.process = None
        shutil.rmtree(self._dir, ignore_errors=True)


def _is_ready(path: Path) -> bool:
    """Whether the server has written its ready line (renamed into place whole)."""
    try:
        event = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(event, dict) and event.get("ready") is True
