"""Worker processes: start N, restart crashed ones with exponential backoff, stop them gracefully.

With `preload` (the default) workers are forked from a zygote process that imported the worker
runtime and the task's module once (`zygote.py`), so they share those pages; without it, or when
the zygote refuses (the task's module started threads when imported), each worker is a fresh
interpreter (`python -m fleetinfer.node.process`). Either way a worker inherits no open broker
connection, socket or lock from the agent; its only inherited descriptor is the write end of a
pipe on which it reports JSON-line events, read here by one thread per worker.

A worker that dies while the node is not draining is started again after a delay that doubles
with each quick death (base, 2×base … max), and resets once a worker has lived `stable_s`. A
worker that exits with the configuration exit code is not restarted: the node stops with its error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleetinfer.errors import ConfigError
from fleetinfer.node.configpipe import config_pipe
from fleetinfer.node.events import read_events
from fleetinfer.node.process import EXIT_CONFIG
from fleetinfer.node.signals import HURRY_SIGNAL, drain_signals_blocked
from fleetinfer.node.worker import WorkerConfig
from fleetinfer.node.zygote import ForkedWorker, PreloadRefusedError, Zygote

log = logging.getLogger("fleetinfer.node")

EventHandler = Callable[[int, dict[str, Any]], None]
"""Called with (worker slot, event) from the slot's reader thread."""

HURRIED_KILL_AFTER_S = 2.0  # after HURRY_SIGNAL, what a worker gets to release its task and end
STOP_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Delay before restarting a crashed worker: base × 2^(quick deaths - 1), capped."""

    base_s: float = 0.5
    max_s: float = 30.0
    stable_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.base_s <= self.max_s:
            raise ConfigError(
                f"restart backoff must satisfy 0 <= base <= max, got base {self.base_s!r} s "
                f"and max {self.max_s!r} s"
            )

    def delay_s(self, failures: int) -> float:
        return float(min(self.max_s, self.base_s * 2.0 ** min(max(failures - 1, 0), 30)))


WorkerProcess = subprocess.Popen[bytes] | ForkedWorker


@dataclass(slots=True)
class _Slot:
    """Bookkeeping for one worker position (its process changes across restarts)."""

    index: int
    process: WorkerProcess | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    reader: threading.Thread | None = None


class Supervisor:
    """Owns the worker processes of one node."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        on_event: EventHandler | None = None,
        on_restart: Callable[[int], None] | None = None,
        policy: RestartPolicy | None = None,
        verbose: bool = False,
        preload: bool = True,
        on_signal: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self._on_signal = on_signal
        self.preload = preload
        self._zygote: Zygote | None = None
        self.policy = policy or RestartPolicy()
        self._on_event = on_event
        self._on_restart = on_restart
        self._verbose = verbose
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()
        self._stopping = False
        self.restarts = 0
        self.fatal: str | None = None
        self.env: dict[str, str] = {}  # set by the agent before starting workers
        self.killed_on_stop = 0  # workers still running when `stop` gave up on them
        self.failed_on_stop = 0  # workers that ended with another code than 0 while stopping

    # -- starting ----------------------------------------------------------------------------

    def scale_to(self, count: int) -> None:
        """Start workers until there are `count` slots."""
        with self._lock:
            while len(self._slots) < count:
                slot = _Slot(index=len(self._slots))
                self._slots.append(slot)
                self._start(slot)

    def _start(self, slot: _Slot) -> None:
        read_fd, write_fd = os.pipe()
        try:
            slot.process = self._forked(write_fd) if self.preload else None
            if slot.process is None:
                with drain_signals_blocked():  # the worker unblocks them once it handles them
                    slot.process = self._fresh(write_fd)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        slot.started_at = time.monotonic()
        slot.restart_at = None
        slot.ready.clear()
        slot.reader = threading.Thread(
            target=read_events,
            args=(read_fd, lambda event: self._handle_event(slot, event)),
            name=f"fleetinfer-events-{slot.index}",
            daemon=True,
        )
        slot.reader.start()

    def _forked(self, events_fd: int) -> ForkedWorker | None:
        """A worker forked by the zygote; None (from now on) if the zygote refused to fork."""
        try:
            return self._zygote_process().spawn(events_fd)
        except PreloadRefusedError as exc:
            log.warning("not preloading workers: %s", exc)
            self.preload = False
            zygote, self._zygote = self._zygote, None
            if zygote is not None:
                zygote.close()
            return None

    def _zygote_process(self) -> Zygote:
        if self._zygote is None:
            env = worker_environment(self.env)
            self._zygote = Zygote(
                self.config.encode(),
                env,
                _worker_stdout(),
                verbose=self._verbose,
                on_signal=self._on_signal,
            )
        return self._zygote

    @property
    def zygote_pid(self) -> int | None:
        """The zygote's pid when workers are forked from one (its memory is the node's too)."""
        return None if self._zygote is None else self._zygote.pid

    def _fresh(self, events_fd: int) -> subprocess.Popen[bytes]:
        """A worker as a fresh interpreter; its configuration comes through a pipe."""
        config_fd = config_pipe(self.config.encode())
        try:
            return subprocess.Popen(
                self._command(events_fd, config_fd),
                pass_fds=(events_fd, config_fd),
                stdout=_worker_stdout(),
                env=worker_environment(self.env),
            )
        finally:
            os.close(config_fd)

    def _command(self, events_fd: int, config_fd: int) -> list[str]:
        command = [sys.executable, "-m", "fleetinfer.node.process"]
        command += ["--config-fd", str(config_fd), "--events-fd", str(events_fd)]
        return [*command, "--verbose"] if self._verbose else command

    def _handle_event(self, slot: _Slot, event: dict[str, Any]) -> None:
        if event["event"] == "ready":
            slot.ready.set()
        elif event["event"] == "error":
            slot.error = str(event.get("message", "unknown error"))
        if self._on_event is not None:
            self._on_event(slot.index, event)

    # -- watching ----------------------------------------------------------------------------

    def poll(self) -> None:
        """Reap dead workers and start the ones whose restart delay has passed."""
        with self._lock:
            now = time.monotonic()
            for slot in self._slots:
                self._check(slot, now)

    def _check(self, slot: _Slot, now: float) -> None:
        if slot.process is not None and slot.process.poll() is not None:
            self._reap(slot, now)
        if slot.restart_at is not None and now >= slot.restart_at and not self._stopping:
            self.restarts += 1
            self._start(slot)
            if self._on_restart is not None:
                self._on_restart(slot.index)

    def _reap(self, slot: _Slot, now: float) -> None:
        assert slot.process is not None
        code = slot.process.poll()
        assert code is not None  # reaped only once it has ended
        pid = slot.process.pid
        slot.process = None
        if slot.reader is not None:
            slot.reader.join(timeout=1.0)
        if self._stopping:
            return
        if code == EXIT_CONFIG:
            self.fatal = slot.error or f"worker {pid} exited with the configuration error code"
            return
        lived_s = now - slot.started_at
        slot.failures = 1 if lived_s >= self.policy.stable_s else slot.failures + 1
        slot.restart_at = now + self.policy.delay_s(slot.failures)
        log.warning(
            "worker %d (pid %d) exited with %s after %.1f s; restarting in %.2f s",
            slot.index, pid, _exit_text(code), lived_s, slot.restart_at - now,
        )  # fmt: skip

    def alive(self) -> int:
        """Worker processes running now."""
        return len(self.pids())

    def pids(self) -> list[int]:
        """Pids of the running workers."""
        return [
            s.process.pid for s in self._slots if s.process is not None and s.process.poll() is None
        ]

    def first_pid(self, timeout_s: float) -> int:
        """Pid of worker 0 once it reported ready; ConfigError if it failed to start."""
        deadline = time.monotonic() + timeout_s
        slot = self._slots[0]
        while not slot.ready.wait(0.05):
            self.poll()
            if self.fatal is not None:
                raise ConfigError(f"the first worker could not start: {self.fatal}")
            if time.monotonic() > deadline:
                raise ConfigError(f"the first worker did not start within {timeout_s:g} s")
        assert slot.process is not None
        return slot.process.pid

    # -- stopping ----------------------------------------------------------------------------

    def stop(self, grace_s: float, hurry: threading.Event | None = None) -> None:
        """SIGTERM every worker, wait up to `grace_s`, SIGKILL what remains. Once `hurry` is
        set, the workers are told to release their tasks now (HURRY_SIGNAL) and get
        HURRIED_KILL_AFTER_S more. Counts what was not clean (`killed_on_stop`,
        `failed_on_stop`)."""
        with self._lock:
            self._stopping = True
            processes = [s.process for s in self._slots if s.process is not None]
        for process in processes:
            _signal(process, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        hurried = False
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            if hurry is not None and hurry.is_set() and not hurried:
                hurried = True
                deadline = min(deadline, time.monotonic() + HURRIED_KILL_AFTER_S)
                for process in processes:
                    _signal(process, HURRY_SIGNAL)
            time.sleep(STOP_POLL_S)
        for process in processes:
            if process.poll() is None:
                log.error("worker %d still running after %.0f s: killing it", process.pid, grace_s)
                process.kill()
                process.wait()
                self.killed_on_stop += 1
            elif process.poll() != 0:
                self.failed_on_stop += 1
        self._join_readers()
        if self._zygote is not None:
            self._zygote.close()

    def _join_readers(self) -> None:
        for slot in self._slots:
            if slot.reader is not None:
                slot.reader.join(timeout=2.0)
            slot.process = None


def _worker_stdout() -> int | None:
    """Task code's prints go to the node's stderr: the agent's stdout may carry JSON lines."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced by an object without a fd
        return None


# Each worker is one of many processes per core: math libraries that start a thread pool per
# process (OpenBLAS, OpenMP, MKL) oversubscribe the cores. One thread each unless the user says.
_SINGLE_THREADED = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def worker_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker process: ours plus `extra`, math-library pools at one thread."""
    env = {**os.environ, **(extra or {})}
    for name in _SINGLE_THREADED:
        env.setdefault(name, "1")
    return env


def _signal(process: WorkerProcess, signum: int) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)


def _wait_until(process: WorkerProcess, deadline: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=max(0.0, deadline - time.monotonic()))


def _exit_text(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"code {code}"
