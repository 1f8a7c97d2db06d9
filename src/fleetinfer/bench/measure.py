"""What a benchmark measures on a running process tree: PSS per process over time, CPU seconds.

PSS (`/proc/<pid>/smaps_rollup`) splits shared pages fairly between the processes that map them,
so the PSS of a node's processes adds up to the node's memory; RSS would count a shared model
once per process. The sampler reads it for this process and every descendant on a timer and keeps
every sample with its time, so a report can pick the steady window (after the first task finished).
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fleetinfer.errors import FleetinferError
from fleetinfer.node.sizing import pss_bytes

MIB = 2**20
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# (command-line fragment, role), first match wins; this process itself is the `agent`.
_ROLES = (
    (b"ray::ModelActor", "model_server"),  # the `ray` mode: the actor holding the models,
    (b"ray::IDLE", "worker"),  # Ray's workers, idle or running a task,
    (b"ray::run_payload", "worker"),
    (b"default_worker.py", "worker"),  # and before they name themselves;
    (b"fleetinfer.bench.ray_driver", "ray_driver"),  # the driver, then Ray's own processes
    (b"ray::", "ray_runtime"),  # (agents, GCS, raylet, monitors)
    (b"/ray/", "ray_runtime"),
    (b"fleetinfer.bench.oneshot", "task_process"),
    (b"fleetinfer.node.process", "worker"),
    (b"triton", "triton"),
    (b"serve", "model_server"),
)
_NUMBERED_ROLES = ("worker", "task_process")
ZYGOTE = b"fleetinfer.node.zygote"


def _cmdline(pid: int) -> list[bytes] | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None


def _parent_pid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def child_pids(pid: int) -> list[int]:
    """Every descendant of `pid` (Linux /proc), depth first; a process that ends while it is
    being walked has no descendants (its /proc folder goes with it, mid-walk)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *child_pids(child)]
    return found


def process_role(pid: int) -> str:
    """`agent`, `model_server`, `worker`, `zygote`, `triton`, `task_process` or `other`, from the
    command line of the process (a worker forked by the zygote shows the zygote's)."""
    if pid == os.getpid():
        return "agent"
    argv = _cmdline(pid)
    if argv is None:
        return "other"
    if any(ZYGOTE in arg for arg in argv):
        parent = _cmdline(_parent_pid(pid)) or []
        return "worker" if any(ZYGOTE in arg for arg in parent) else "zygote"
    for fragment, role in _ROLES:
        if any(fragment in arg for arg in argv):
            return role
    return "other"


@dataclass(frozen=True, slots=True)
class PssSample:
    """The PSS and the CPU seconds so far of every process of the tree at one moment."""

    at: float
    bytes_by_pid: dict[int, int]
    cpu_s_by_pid: dict[int, float]
    sampler_cpu_s: float = 0.0  # what the sampler itself had spent so far (in the agent's CPU)

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_pid.values())


class PssSampler:
    """Samples the PSS of this process and its descendants every `interval_s`, in a thread.

    Reading `smaps_rollup` walks every page a process maps, in the kernel: with eight workers
    and a model server on two cores, sampling every 0.25 s took about 4 % of the machine
    (`perf`), CPU the node under test did not get and that the agent's CPU counted as the
    node's. So the sampler waits at least `1 / MAX_SHARE` times what its last sample cost, and
    keeps its own CPU (`cpu_s`, and each sample's `sampler_cpu_s`) for the report to leave out.
    """

    MAX_SHARE = 0.02  # of one core

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.samples: list[PssSample] = []
        self.roles: dict[int, str] = {}
        self.cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pss-sampler", daemon=True)

    def _loop(self) -> None:
        wait_s = self.interval_s
        while not self._stop.wait(wait_s):
            started = time.thread_time()
            self.sample()
            cost_s = time.thread_time() - started
            self.cpu_s += cost_s
            wait_s = max(self.interval_s, cost_s / self.MAX_SHARE)

    def sample(self) -> None:
        sizes: dict[int, int] = {}
        cpu: dict[int, float] = {}
        for pid in [os.getpid(), *child_pids(os.getpid())]:
            try:
                sizes[pid] = pss_bytes(pid)
                cpu[pid] = process_cpu_s(pid)
            except (OSError, FleetinferError):  # the process ended between listing and reading
                sizes.pop(pid, None)
                continue
            role = process_role(pid)  # read again each time: a child seen before its exec
            if role != "other" or pid not in self.roles:  # still shows its parent's command
                self.roles[pid] = role
        self.samples.append(PssSample(time.time(), sizes, cpu, self.cpu_s))

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_bytes(self) -> dict[int, int]:
        """Each process's largest PSS over all samples."""
        peaks: dict[int, int] = {}
        for sample in self.samples:
            for pid, size in sample.bytes_by_pid.items():
                peaks[pid] = max(size, peaks.get(pid, 0))
        return peaks

    def summary_mib(self) -> dict[str, float]:
        """Peak PSS by role (workers numbered by pid) and the sum of the peaks as `node_total`."""
        summary = role_mib(self.peak_bytes, self.roles)
        summary["node_total"] = round(sum(self.peak_bytes.values()) / MIB, 1)
        return summary

    def window(self, start: float, end: float) -> list[PssSample]:
        """The samples taken between `start` and `end` (`time.time()` values)."""
        return [s for s in self.samples if start <= s.at <= end]


def role_mib(bytes_by_pid: dict[int, int], roles: dict[int, str]) -> dict[str, float]:
    """MiB by role: workers and task processes numbered by pid (`worker_1`, `worker_2` …), the
    processes of one server (Triton's, or a restarted model server) added up."""
    numbered: dict[str, int] = {}
    summary: dict[str, float] = {}
    for pid, size in sorted(bytes_by_pid.items()):
        role = roles.get(pid, "other")
        if role in _NUMBERED_ROLES:
            numbered[role] = numbered.get(role, 0) + 1
            role = f"{role}_{numbered[role]}"
        summary[role] = round(summary.get(role, 0.0) + size / MIB, 1)
    return summary


def median_by_pid(samples: Iterable[PssSample]) -> dict[int, int]:
    """Each process's median PSS over the samples in which it appears."""
    series: dict[int, list[int]] = {}
    for sample in samples:
        for pid, size in sample.bytes_by_pid.items():
            series.setdefault(pid, []).append(size)
    return {pid: int(statistics.median(sizes)) for pid, sizes in series.items()}


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far (`/proc/<pid>/stat`, its own threads)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def process_on_cpu_ns(pid: int) -> int:
    """Nanoseconds the live threads of one process have spent on a CPU so far (`schedstat`):
    exact, where `process_cpu_s` counts clock ticks; for CPU per call of calls well under a
    tick. A thread that has ended is no longer counted: take both readings while the threads
    that do the work live (a server's connection and model threads do)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that ended
            total += int((task / "schedstat").read_text().split()[0])
    return total


def window_cpu_s(samples: list[PssSample]) -> float:
    """CPU seconds spent between the first and the last sample by the processes seen in both,
    less what the sampler itself spent meanwhile."""
    if len(samples) < 2:
        return 0.0
    first, last = samples[0].cpu_s_by_pid, samples[-1].cpu_s_by_pid
    sampler_s = samples[-1].sampler_cpu_s - samples[0].sampler_cpu_s
    return sum(last[pid] - first[pid] for pid in first.keys() & last.keys()) - sampler_s


def tree_cpu_s() -> float:
    """CPU seconds (user + system) of this process and of its children that were waited for
    (a child's own waited children included). Take it before and after a run: the difference is
    what the run's process tree cost, processes that already exited included."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
