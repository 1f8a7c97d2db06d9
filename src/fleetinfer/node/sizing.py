"""How many workers a node runs: N = min(by cores, by memory), from measured numbers.

By cores: usable cores (CPU affinity, capped by a cgroup CPU quota) ÷ cores per worker.
By memory: one warm worker's PSS (`/proc/<pid>/smaps_rollup`, which splits shared pages fairly,
unlike RSS) against the memory available (`MemAvailable`, capped by a cgroup memory limit),
keeping a reserve for the agent, the model server and the page cache. The memory is measured
while that first worker runs, so its own share is added back to the budget.

The parsers take text, so the arithmetic is unit-tested without a particular machine.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from fleetinfer.errors import ConfigError

MIB = 1024 * 1024
DEFAULT_RESERVE_BYTES = 512 * MIB
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class HostResources:
    """What this node can use: cores (may be fractional under a quota) and available memory."""

    cores: float
    available_bytes: int


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """The number of workers and how it was chosen."""

    workers: int
    by_cores: int
    by_memory: int | None
    worker_pss_bytes: int | None
    reason: str


def plan_workers(
    resources: HostResources,
    *,
    worker_pss_bytes: int | None,
    cores_per_worker: float = 1.0,
    reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    running_workers: int = 1,
    requested: int | None = None,
) -> WorkerPlan:
    """N = `requested` if given, else min(by cores, by memory); never below 1."""
    if cores_per_worker <= 0:
        raise ConfigError(f"cores_per_worker must be above 0, got {cores_per_worker!r}")
    by_cores = max(1, math.floor(resources.cores / cores_per_worker + 1e-9))
    by_memory = _by_memory(resources, worker_pss_bytes, reserve_bytes, running_workers)
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--workers must be at least 1, got {requested}")
        return WorkerPlan(requested, by_cores, by_memory, worker_pss_bytes, "requested")
    if by_memory is None or by_cores <= by_memory:
        return WorkerPlan(by_cores, by_cores, by_memory, worker_pss_bytes, "cores")
    return WorkerPlan(by_memory, by_cores, by_memory, worker_pss_bytes, "memory")


def _by_memory(
    resources: HostResources, pss_bytes: int | None, reserve_bytes: int, running: int
) -> int | None:
    if pss_bytes is None or pss_bytes <= 0:
        return None
    budget_bytes = resources.available_bytes + running * pss_bytes - reserve_bytes
    return max(1, budget_bytes // pss_bytes)


# -- measuring this machine ------------------------------------------------------------------


def measure_host() -> HostResources:
    """Usable cores and available memory of this machine, cgroup limits included."""
    return HostResources(cores=usable_cores(), available_bytes=available_memory_bytes())


def usable_cores() -> float:
    """CPUs this process may run on, capped by a cgroup v2 `cpu.max` quota if there is one."""
    affinity = len(os.sched_getaffinity(0))
    quota = parse_cpu_max(_read(CGROUP_ROOT / "cpu.max"))
    return affinity if quota is None else min(float(affinity), quota)


def available_memory_bytes() -> int:
    """`MemAvailable`, capped by the cgroup v2 limit minus current usage if there is a limit."""
    available = parse_meminfo_available(_read(Path("/proc/meminfo")))
    limit = parse_cgroup_bytes(_read(CGROUP_ROOT / "memory.max"))
    current = parse_cgroup_bytes(_read(CGROUP_ROOT / "memory.current"))
    if limit is None or current is None:
        return available
    return max(0, min(available, limit - current))


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process, from `/proc/<pid>/smaps_rollup`."""
    text = _read(Path(f"/proc/{pid}/smaps_rollup"))
    if text is None:
        raise ConfigError(
            f"cannot read /proc/{pid}/smaps_rollup (Linux 4.14+ needed, and the process must be "
            "alive and ours): give the number of workers with --workers"
        )
    return parse_smaps_rollup_pss(text)


def parse_smaps_rollup_pss(text: str) -> int:
    """The `Pss:` line of smaps_rollup, in bytes."""
    return _kib_field(text, "Pss:", "smaps_rollup")


def parse_meminfo_available(text: str | None) -> int:
    """The `MemAvailable:` line of /proc/meminfo, in bytes."""
    if text is None:
        raise ConfigError("cannot read /proc/meminfo: give the number of workers with --workers")
    return _kib_field(text, "MemAvailable:", "/proc/meminfo")


def parse_cpu_max(text: str | None) -> float | None:
    """cgroup v2 `cpu.max` ("max 100000" or "200000 100000") as cores, None when unlimited."""
    if text is None:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        return int(parts[0]) / int(parts[1])
    except (ValueError, ZeroDivisionError):
        return None


def parse_cgroup_bytes(text: str | None) -> int | None:
    """A cgroup v2 byte count ("max" = unlimited → None)."""
    if text is None or text.strip() in ("", "max"):
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _kib_field(text: str, key: str, source: str) -> int:
    for line in text.splitlines():
        if line.startswith(key):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1]) * 1024
    raise ConfigError(f"{source} has no readable {key!r} line: got {text[:120]!r}")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
