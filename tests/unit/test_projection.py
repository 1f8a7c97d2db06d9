from __future__ import annotations

from pathlib import Path

import pytest

from fleetinfer.bench.instances import instance_shape, load_instances
from fleetinfer.bench.projection import ModeFootprint, project
from fleetinfer.errors import ConfigError, InputError

R6I = instance_shape("r6i.8xlarge")
GIB = 1024.0


def test_isolated_copies_of_8_5_gb_bound_an_r6i_8xlarge_by_memory_at_30_workers() -> None:
    # The production system's first design: 8.5 GB per task, 4 minutes per task, CPU-bound half the time.
    isolated = ModeFootprint(
        "isolated", worker_mib=8.5 * GIB, node_fixed_mib=0, task_wall_s=240, task_cpu_s=240
    )
    p = project(isolated, R6I, reserve_mib=0)
    assert (p.workers_by_memory, p.workers_by_cores, p.workers) == (30, 32, 30)
    assert p.bound_by == "memory"
    assert p.tasks_per_min == pytest.approx(30 * 60 / 240)  # 7.5 tasks/min, as reported


def test_a_shared_server_makes_the_same_node_core_bound_at_32_workers() -> None:
    shared = ModeFootprint(
        "shared", worker_mib=2.5 * GIB, node_fixed_mib=6 * GIB, task_wall_s=120, task_cpu_s=120
    )
    p = project(shared, R6I, reserve_mib=0)
    assert p.workers_by_memory == 100  # (256 - 6) / 2.5
    assert (p.workers_by_cores, p.workers, p.bound_by) == (32, 32, "cores")
    assert p.tasks_per_min == pytest.approx(16.0)  # 32 × 60 / 120, the reported 16 tasks/min


def test_tasks_per_dollar_uses_the_hourly_price() -> None:
    mode = ModeFootprint("m", worker_mib=1024, node_fixed_mib=0, task_wall_s=60, task_cpu_s=60)
    p = project(mode, R6I, reserve_mib=0)
    assert p.tasks_per_usd == pytest.approx(p.tasks_per_min * 60 / R6I.usd_per_hour)


def test_io_bound_tasks_need_more_workers_than_cores_and_are_capped_by_cpu() -> None:
    # Each task is 25 % CPU: 4 workers per core keep the cores busy; memory allows 248.
    mode = ModeFootprint("io", worker_mib=1024, node_fixed_mib=0, task_wall_s=4, task_cpu_s=1)
    p = project(mode, R6I, reserve_mib=2048)
    assert p.workers_by_memory == 254
    assert p.workers_by_cores == 128
    assert p.tasks_per_min == pytest.approx(32 * 60 / 1)


def test_a_node_too_small_for_one_worker_projects_zero() -> None:
    mode = ModeFootprint(
        "huge", worker_mib=300 * GIB, node_fixed_mib=0, task_wall_s=1, task_cpu_s=1
    )
    p = project(mode, R6I)
    assert (p.workers, p.tasks_per_min, p.bound_by) == (0, 0.0, "memory")


def test_a_nonpositive_measurement_is_refused() -> None:
    with pytest.raises(InputError, match="task_cpu_s must be > 0"):
        ModeFootprint("m", worker_mib=1, node_fixed_mib=0, task_wall_s=1, task_cpu_s=0)


def test_instances_can_be_overridden_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text('[instances."r6i.8xlarge"]\nvcpu = 32\nmemory_gib = 256\nusd_per_hour = 1.5\n')
    assert instance_shape("r6i.8xlarge", load_instances(path)).usd_per_hour == 1.5
    with pytest.raises(ConfigError, match="unknown instance shape"):
        instance_shape("z9.mega")
    path.write_text('[instances."x"]\nvcpu = 32\n')
    with pytest.raises(ConfigError, match="memory_gib"):
        load_instances(path)
