"""The `ray` mode of `fleetinfer bench`: one round through a Ray instance the bench starts itself.

The driver (`ray_driver.py`) runs in a process of its own, under the PSS sampler like a node: it
starts Ray, loads the models in an actor, says `ready` (the clock starts, as Triton's starts once
Triton is up: Ray's start and the model load are `server_start_s`, outside the run), runs the
payloads as Ray tasks and reports them, then waits for `stop` while this process reads the CPU
seconds of every process of the tree (Ray's workers are not all waited for by their parents, so
`getrusage` would miss them): the round's CPU is the difference of two such readings. A round
that overstays `ROUND_TIMEOUT_S` is ended: the driver's process group, then every process of its
tree still alive, by pid.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fleetinfer.bench.measure import PssSampler, child_pids, process_cpu_s
from fleetinfer.bench.probe import PROBE_TARGET  # noqa: F401 - the tasks run the probe's task
from fleetinfer.node.sizing import usable_cores

if TYPE_CHECKING:
    from fleetinfer.bench.runner import BenchConfig, RoundRun

ROUND_TIMEOUT_S = 900.0
AUTH_ENV = "RAY_AUTH_MODE"  # hosts whose Ray refuses to start without it take "token"


class RayRunError(Exception):
    """A `ray` round that could not run (Ray failed to start, a timeout): its row says why."""


def ray_unavailable() -> str | None:
    """Why the `ray` mode cannot run here, or None."""
    if importlib.util.find_spec("ray") is None:
        return (
            "the ray mode needs the Python package 'ray', which is not installed: "
            "run `pip install 'fleetinfer[ray]'`"
        )
    return None


def run_ray(config: BenchConfig, number: int, workdir: Path) -> RoundRun:
    """The payloads as Ray tasks, `config.workers` at a time, models in one Ray actor."""
    from fleetinfer.bench.runner import RoundRun, TaskTiming

    spec_path = workdir / "ray-spec.json"
    spec_path.write_text(json.dumps(_spec(config, workdir)))
    with PssSampler(config.sample_interval_s) as sampler, _driver(spec_path) as driver:
        began = time.time()
        ready = _message(driver, "ready_at")
        started_at, cpu_before = time.time(), _tree_cpu_s()
        report = _message(driver, "tasks")
        ended_at, cpu_s = time.time(), _tree_cpu_s() - cpu_before - sampler.cpu_s
    keys = ("started_at", "finished_at", "model_calls", "error", "model_wall_s", "task_cpu_s")
    tasks = [TaskTiming(*(t[k] for k in keys)) for t in report["tasks"]]
    run = RoundRun("ray", number, started_at, ended_at, cpu_s, tasks, sampler)
    run.server_start_s = float(ready["ready_at"]) - began
    return run


def _spec(config: BenchConfig, workdir: Path) -> dict[str, Any]:
    return {
        "target": config.target,
        "models": str(config.models.resolve()),
        "payloads": list(config.payloads),
        "workers": config.workers,
        "cores": max(1.0, float(usable_cores())),
        "executions": config.server_executions,
        "threads": config.server_threads,
        "temp_dir": str(workdir / "ray"),
        "cwd": os.getcwd(),
    }


class _Driver:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.deadline = time.monotonic() + ROUND_TIMEOUT_S
        self.lines: list[str] = []  # stdout, read by a thread: a read must not outwait the limit
        self._arrived = threading.Condition()
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            with self._arrived:
                self.lines.append(line)
                self._arrived.notify_all()
        with self._arrived:
            self.lines.append("")  # end of output
            self._arrived.notify_all()

    def next_line(self) -> str:
        with self._arrived:
            while not self.lines:
                left_s = self.deadline - time.monotonic()
                if left_s <= 0:
                    raise RayRunError(f"the Ray round took longer than {ROUND_TIMEOUT_S:.0f} s")
                self._arrived.wait(left_s)
            return self.lines.pop(0)


@contextlib.contextmanager
def _driver(spec_path: Path) -> Any:
    env = dict(os.environ)
    env.setdefault(AUTH_ENV, "token")
    log = (spec_path.parent / "ray-driver.log").open("w")
    command = [sys.executable, "-m", "fleetinfer.bench.ray_driver", str(spec_path)]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
        env=env, start_new_session=True,
    )  # fmt: skip
    driver = _Driver(process)
    try:
        yield driver
    except RayRunError as exc:
        raise RayRunError(f"{exc}; the driver's log ends: {_tail(spec_path)}") from exc
    finally:
        _stop(process)
        log.close()


def _message(driver: _Driver, key: str) -> dict[str, Any]:
    """The driver's next JSON line holding `key` (other lines are Ray's own output)."""
    while True:
        line = driver.next_line()
        if not line:
            raise RayRunError(f"the Ray driver exited (code {driver.process.wait()})")
        with contextlib.suppress(ValueError):
            message = json.loads(line)
            if isinstance(message, dict) and "error" in message:
                raise RayRunError(str(message["error"]))
            if isinstance(message, dict) and key in message:
                return message


def _tree_cpu_s() -> float:
    """CPU seconds so far of every live process below this one (`/proc`)."""
    total = 0.0
    for pid in child_pids(os.getpid()):
        with contextlib.suppress(OSError, ValueError):
            total += process_cpu_s(pid)
    return total


def _stop(process: subprocess.Popen[str]) -> None:
    """Let the driver shut Ray down; past 60 s, end its group and what is left of its tree."""
    leftovers = {pid: _start_ticks(pid) for pid in child_pids(process.pid)}
    with contextlib.suppress(OSError, ValueError):
        assert process.stdin is not None
        process.stdin.write("stop\n")
        process.stdin.close()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    for pid, ticks in leftovers.items():  # Ray's own, if any outlived the driver (the same
        if ticks is not None and _start_ticks(pid) == ticks:  # process: not a reused pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    if process.stdout is not None:
        process.stdout.close()


def _start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot, `/proc/<pid>/stat`), None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text[text.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _tail(spec_path: Path) -> str:
    with contextlib.suppress(OSError):
        return (spec_path.parent / "ray-driver.log").read_text()[-800:]
    return "(no log)"
