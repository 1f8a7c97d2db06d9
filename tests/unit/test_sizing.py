"""Worker sizing: N = min(by cores, by memory), from parsed /proc and cgroup files."""

from __future__ import annotations

import os

import pytest

from fleetinfer.errors import ConfigError
from fleetinfer.node.sizing import (
    MIB,
    HostResources,
    measure_host,
    parse_cgroup_bytes,
    parse_cpu_max,
    parse_meminfo_available,
    parse_smaps_rollup_pss,
    plan_workers,
    pss_bytes,
)

GIB = 1024 * MIB


def test_cores_bound_the_plan_when_memory_is_plentiful() -> None:
    plan = plan_workers(
        HostResources(cores=32, available_bytes=256 * GIB), worker_pss_bytes=2 * GIB
    )
    assert (plan.workers, plan.by_cores, plan.reason) == (32, 32, "cores")
    assert plan.by_memory is not None
    assert plan.by_memory > 32


def test_memory_bounds_the_plan_when_each_worker_is_large() -> None:
    # The production system's first design: 8.5 GB per task on a 256 GB node -> 30 tasks.
    # Measured with one worker already running: 256 - 8.5 available, 2 GiB reserve.
    plan = plan_workers(
        HostResources(cores=32, available_bytes=int((256 - 8.5) * GIB)),
        worker_pss_bytes=int(8.5 * GIB),
        reserve_bytes=2 * GIB,
    )
    assert (plan.workers, plan.reason) == (29, "memory")
    assert plan.by_memory == 29


def test_memory_budget_adds_back_the_running_workers_share() -> None:
    resources = HostResources(cores=64, available_bytes=10 * GIB)
    one = plan_workers(resources, worker_pss_bytes=GIB, reserve_bytes=0, running_workers=1)
    none = plan_workers(resources, worker_pss_bytes=GIB, reserve_bytes=0, running_workers=0)
    assert (one.workers, none.workers) == (11, 10)


def test_the_plan_never_drops_below_one_worker() -> None:
    plan = plan_workers(
        HostResources(cores=0.5, available_bytes=0), worker_pss_bytes=4 * GIB, reserve_bytes=GIB
    )
    assert plan.workers == 1


def test_fractional_quota_and_cores_per_worker_round_down() -> None:
    plan = plan_workers(
        HostResources(cores=7.5, available_bytes=GIB), worker_pss_bytes=None, cores_per_worker=2
    )
    assert (plan.workers, plan.by_memory) == (3, None)


def test_a_requested_count_wins_but_the_bounds_are_still_reported() -> None:
    plan = plan_workers(
        HostResources(cores=2, available_bytes=GIB), worker_pss_bytes=100 * MIB, requested=5
    )
    assert (plan.workers, plan.by_cores, plan.reason) == (5, 2, "requested")


@pytest.mark.parametrize(("requested", "cpw"), [(0, 1.0), (None, 0.0)])
def test_bad_sizing_arguments_are_config_errors(requested: int | None, cpw: float) -> None:
    with pytest.raises(ConfigError):
        plan_workers(
            HostResources(cores=2, available_bytes=GIB),
            worker_pss_bytes=None,
            requested=requested,
            cores_per_worker=cpw,
        )


def test_smaps_rollup_pss_is_read_in_bytes() -> None:
    text = "00400000-7ffd [rollup]\nRss:              51200 kB\nPss:              20480 kB\n"
    assert parse_smaps_rollup_pss(text) == 20480 * 1024


def test_meminfo_without_memavailable_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no readable 'MemAvailable:' line"):
        parse_meminfo_available("MemTotal: 100 kB\n")
    assert parse_meminfo_available("MemAvailable:   2048 kB\n") == 2 * MIB


@pytest.mark.parametrize(
    ("text", "cores"), [("max 100000\n", None), ("250000 100000\n", 2.5), (None, None), ("x", None)]
)
def test_cgroup_cpu_quota_is_read_as_cores(text: str | None, cores: float | None) -> None:
    assert parse_cpu_max(text) == cores


def test_cgroup_memory_max_reads_unlimited_as_none() -> None:
    assert parse_cgroup_bytes("max\n") is None
    assert parse_cgroup_bytes("1073741824\n") == GIB


def test_this_process_has_a_measurable_pss_and_host() -> None:
    assert 1 * MIB < pss_bytes(os.getpid()) < 64 * GIB
    host = measure_host()
    assert host.cores >= 1
    assert host.available_bytes > 0


def test_pss_of_a_missing_process_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="give the number of workers with --workers"):
        pss_bytes(2**22 + 12345)
