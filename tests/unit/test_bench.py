from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fleetinfer.bench.instances import instance_shape, load_instances
from fleetinfer.bench.measure import (
    PssSample,
    PssSampler,
    child_pids,
    process_on_cpu_ns,
    role_mib,
    window_cpu_s,
)
from fleetinfer.bench.payloads import load_payloads
from fleetinfer.bench.probe import counting
from fleetinfer.bench.report import (
    decomposition,
    efficiency,
    limit_tasks_per_min,
    median_of,
    mode_summary,
    percentile,
    round_metrics,
)
from fleetinfer.bench.runner import BenchConfig, Calibration, RoundRun, TaskTiming, rotation
from fleetinfer.bench.triton import triton_unavailable
from fleetinfer.errors import ConfigError, InputError
from fleetinfer.task import Task, TaskContext

MIB = 2**20
TINY_MODELS = Path(__file__).resolve().parents[2] / "examples" / "tinyapp" / "models"


# -- payloads --------------------------------------------------------------------------------


def test_payloads_are_cycled_to_the_number_of_tasks(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"n": 1}\n\n{"n": 2}\n')
    assert load_payloads(path, 5) == [{"n": 1}, {"n": 2}, {"n": 1}, {"n": 2}, {"n": 1}]
    assert load_payloads(path, 1) == [{"n": 1}]


def test_a_payload_line_that_is_not_json_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"n": 1}\n{"n": 2\n')
    with pytest.raises(InputError, match=r"p\.jsonl:2: not a JSON payload"):
        load_payloads(path, 3)


@pytest.mark.parametrize("content", [None, "", "\n  \n"])
def test_a_missing_or_empty_payloads_file_is_an_input_error(
    tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "p.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=r"p\.jsonl"):
        load_payloads(path, 3)


# -- rounds and statistics --------------------------------------------------------------------


def test_modes_rotate_by_one_each_round() -> None:
    assert rotation(("A", "B", "C", "D"), 3) == [
        ["A", "B", "C", "D"],
        ["B", "C", "D", "A"],
        ["C", "D", "A", "B"],
    ]
    assert rotation(("A", "B"), 3) == [["A", "B"], ["B", "A"], ["A", "B"]]


def test_percentiles_interpolate_and_medians_skip_missing_rounds() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == pytest.approx(4.8)
    assert median_of([{"x": 3.0}, {"x": None}, {"x": 1.0}, {"x": 2.0}], "x") == 2.0
    assert median_of([{"x": None}], "x") is None


def test_the_limit_and_efficiency_follow_their_formulas() -> None:
    limit = limit_tasks_per_min(cores=2, cpu_s_per_task=0.5)
    assert limit == 240.0  # 2 cores x 60 s / 0.5 CPU s per task
    assert efficiency(180.0, limit) == 0.75


def test_the_limit_uses_the_median_rounds_calibration_and_keeps_every_round() -> None:
    rounds = [
        Calibration(tasks=5, cpu_s_per_task=cpu, wall_s_per_task=cpu * 1.1,
                    model_calls_per_task=1.0, threads=1)
        for cpu in (0.64, 0.57, 0.60, 0.70)
    ]  # fmt: skip
    chosen = Calibration.median_of(rounds)
    assert chosen.cpu_s_per_task == 0.60  # the lower middle of an even count: a real round
    assert chosen.wall_s_per_task == pytest.approx(0.66)  # that round's own wall time
    assert chosen.cpu_s_per_task_rounds == (0.64, 0.57, 0.60, 0.70)
    assert Calibration.median_of(rounds[:1]).cpu_s_per_task == 0.64


def test_an_unknown_or_repeated_mode_is_a_config_error() -> None:
    for modes in (("shared", "gpu"), ("shared", "shared"), ()):
        with pytest.raises(ConfigError, match="--modes"):
            BenchConfig(target="m:t", models=TINY_MODELS, payloads=({},), modes=modes)


def test_isolated_processes_share_the_thread_budget_with_at_least_one_thread_each() -> None:
    config = BenchConfig(target="m:t", models=TINY_MODELS, payloads=({},), workers=8, threads=2)
    assert (config.thread_budget, config.process_threads) == (2, 1)
    config = BenchConfig(target="m:t", models=TINY_MODELS, payloads=({},), workers=2, threads=8)
    assert config.process_threads == 4


def _sampler(samples: list[PssSample], roles: dict[int, str]) -> PssSampler:
    sampler = PssSampler()
    sampler.samples = samples
    sampler.roles = roles
    return sampler


def _run() -> RoundRun:
    """A node started at t=100 s: 4 tasks finish at 101..104, 8 CPU s, 3 PSS samples."""
    roles = {1: "agent", 2: "model_server", 3: "worker", 4: "worker"}
    samples = [
        PssSample(100.5, {1: 10 * MIB, 2: 100 * MIB, 3: 5 * MIB}, {1: 0.1, 2: 0.5, 3: 0.2}),
        PssSample(101.5, {1: 10 * MIB, 2: 100 * MIB, 3: 20 * MIB, 4: 20 * MIB},
                  {1: 0.2, 2: 1.0, 3: 0.6, 4: 0.5}),
        PssSample(102.5, {1: 12 * MIB, 2: 110 * MIB, 3: 22 * MIB, 4: 20 * MIB},
                  {1: 0.3, 2: 2.0, 3: 1.1, 4: 0.9}),
        PssSample(103.5, {1: 12 * MIB, 2: 120 * MIB, 3: 24 * MIB, 4: 20 * MIB},
                  {1: 0.3, 2: 2.0, 3: 1.1, 4: 0.9}),
    ]  # fmt: skip
    tasks = [TaskTiming(100.0 + i, 101.0 + i, 3) for i in range(4)]
    return RoundRun("shared", 1, 100.0, 105.0, 8.0, tasks, _sampler(samples, roles))


def test_round_metrics_come_from_the_task_timestamps_cpu_and_steady_pss() -> None:
    m = round_metrics(_run(), cores=2.0, workers=1)
    assert m["succeeded"] == 4
    assert m["wall_s"] == 4.0
    assert m["tasks_per_min"] == 60.0
    assert m["tasks_per_min_steady"] == 60.0  # 3 tasks in the 3 s between first and last
    assert round_metrics(_run(), cores=2.0, workers=2)["tasks_per_min_steady"] is None
    assert m["model_calls"] == 12
    assert m["model_calls_per_s"] == 3.0
    assert m["latency_p50_s"] == m["latency_p95_s"] == 1.0
    assert m["first_task_s"] == 1.0
    assert m["ramp_s"] == 1.0  # one worker: its first task
    assert m["drain_s"] == 0.0
    assert m["cpu_utilization"] == 8.0 / (5.0 * 2.0)
    assert m["cpu_s_per_task"] == 2.0
    # steady window 101..104: samples at 101.5, 102.5, 103.5; totals 150, 164, 176 MiB
    assert m["node_pss_mib"] == 164.0
    assert m["node_pss_peak_mib"] == 176.0
    assert m["pss_mib"] == {
        "agent": 12.0,
        "model_server": 110.0,
        "worker_1": 22.0,
        "worker_2": 20.0,
    }
    assert m["worker_pss_mib"] == 21.0
    assert m["node_fixed_pss_mib"] == 122.0
    # CPU between the samples at 101.5 and 103.5 (4.3 - 2.3 s) over the 2 tasks finished then
    assert m["cpu_s_per_task_steady"] == pytest.approx(1.0)


def test_the_steady_rate_leaves_out_the_ramp_up_and_the_drain() -> None:
    from fleetinfer.bench.report import steady_tasks_per_min

    # 2 workers: a slow start (first finishes at 10 and 11), then one task a second, then drain
    finishes = [10.0, 11.0, *[12.0 + i for i in range(8)], 30.0]
    # finishes sorted: index 1 (11.0) to index 9 (19.0): 8 tasks in 8 s
    assert steady_tasks_per_min(finishes, 2) == 60.0
    assert steady_tasks_per_min(finishes[:5], 2) is None  # below 3 x workers


def test_a_mode_summary_computes_efficiency_and_projects_the_footprint() -> None:
    shape = instance_shape("r6i.8xlarge")
    summary = mode_summary("shared", [_run(), _run(), _run()], 2.0, 120.0, shape, workers=1)
    assert summary["tasks_per_min"] == 60.0
    assert summary["efficiency"] == 0.5  # steady 60 tasks/min / 120 limit
    assert summary["efficiency_whole_run"] == 0.5
    projection = summary["projection"]
    assert projection["footprint"] == {
        "worker_mib": 21.0, "node_fixed_mib": 122.0, "task_wall_s": 1.0,
        "task_cpu_s": pytest.approx(1.0),
    }  # fmt: skip
    assert projection["workers_by_cores"] == 32  # 32 vCPU x 1 s wall / 1 CPU s
    assert projection["workers"] == min(projection["workers_by_memory"], 32)
    assert projection["bound_by"] == "cores"
    assert len(summary["rounds"]) == 3


def test_the_projection_uses_the_wall_a_task_takes_with_a_core_to_itself() -> None:
    shape = instance_shape("r6i.8xlarge")
    # 8 workers on 1.6 busy cores (2 cores x 0.8 utilization): each task waited for a core,
    # so its 1 s measured wall is 1 x 1.6 / 8 = 0.2 s of its own
    summary = mode_summary("shared", [_run()], 2.0, 120.0, shape, workers=8)
    assert summary["task_wall_uncontended_s"] == pytest.approx(0.2)
    assert summary["projection"]["footprint"]["task_wall_s"] == pytest.approx(0.2)
    assert summary["projection"]["workers_by_cores"] == 6  # floor(32 x 0.2 / 1.0)


def test_a_mode_whose_tasks_all_failed_reports_the_error() -> None:
    run = _run()
    run.tasks = [TaskTiming(100.0, 101.0, 0, "rejected: bad payload")]
    summary = mode_summary("shared", [run], 2.0, 120.0, instance_shape("r6i.8xlarge"), workers=1)
    assert summary == {"error": "round 1: no task succeeded: ['rejected: bad payload']"}


def test_the_decomposition_gives_median_phases_and_their_shares() -> None:
    phases = [
        {"process_start_s": 0.1, "imports_s": 0.2, "model_load_s": 0.3, "compute_s": 0.4,
         "exit_s": 0.0, "total_s": 1.0},
        {"process_start_s": 0.3, "imports_s": 0.2, "model_load_s": 0.5, "compute_s": 1.0,
         "exit_s": 0.0, "total_s": 2.0},
    ]  # fmt: skip
    d = decomposition(phases)
    assert d["processes"] == 2
    assert d["total_s"] == 1.5
    assert d["model_load_s"] == pytest.approx(0.4)
    assert d["model_load_share"] == pytest.approx(0.4 / 1.5)


def test_pss_roles_number_workers_and_add_up_server_processes() -> None:
    roles = {7: "triton", 8: "triton", 3: "worker", 5: "worker", 1: "agent"}
    sizes = {7: 10 * MIB, 8: 5 * MIB, 3: MIB, 5: 2 * MIB, 1: MIB}
    assert role_mib(sizes, roles) == {
        "agent": 1.0, "worker_1": 1.0, "worker_2": 2.0, "triton": 15.0
    }  # fmt: skip


def test_window_cpu_counts_only_processes_seen_at_both_ends() -> None:
    samples = [PssSample(0.0, {}, {1: 1.0, 2: 5.0}), PssSample(1.0, {}, {1: 3.0, 3: 9.0})]
    assert window_cpu_s(samples) == 2.0


def test_on_cpu_time_counts_every_live_thread_of_a_process() -> None:
    burnt, done = threading.Event(), threading.Event()

    def burn(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    def worker_thread() -> None:
        burn(0.05)
        burnt.set()
        done.wait(10)  # alive while it is counted

    before = process_on_cpu_ns(os.getpid())
    worker = threading.Thread(target=worker_thread)
    worker.start()
    try:
        burn(0.05)
        assert burnt.wait(10)
        spent = process_on_cpu_ns(os.getpid()) - before
    finally:
        done.set()
        worker.join()
    assert 0.1e9 <= spent < 5e9  # both threads' 50 ms, not a clock-tick estimate


def test_window_cpu_leaves_out_what_the_sampler_spent() -> None:
    samples = [PssSample(0.0, {}, {1: 1.0}, 0.25), PssSample(1.0, {}, {1: 3.0}, 0.75)]
    assert window_cpu_s(samples) == 1.5  # the agent's 2 s less the sampler's 0.5


def test_the_sampler_waits_longer_when_a_sample_costs_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def costly_sample(self: PssSampler) -> None:
        started = time.thread_time()
        while time.thread_time() - started < 0.01:  # 10 ms of CPU: the next wait >= 0.5 s
            pass
        self.samples.append(PssSample(time.time(), {}, {}, self.cpu_s))

    monkeypatch.setattr(PssSampler, "sample", costly_sample)
    with PssSampler(interval_s=0.001) as sampler:
        time.sleep(0.3)
    assert 1 <= len(sampler.samples) <= 2  # every 1 ms, it would have taken about 25
    assert sampler.cpu_s >= 0.01


# -- probe, instances, triton -----------------------------------------------------------------


def test_the_probe_counts_model_calls_and_keeps_the_task_value() -> None:
    class Model:
        def infer(self, inputs: Any, *, version: int | None = None) -> dict[str, Any]:
            return {"y": inputs["x"]}

    def task(ctx: TaskContext, payload: Any) -> Any:
        model = ctx.model("m")
        return [model.infer({"x": i})["y"] for i in range(payload)]

    wrapped = counting(Task("t", task, max_receives=2))
    ctx = TaskContext(
        task_id="1", task_name="t", receive_count=1, logger=logging.getLogger("t"),
        _heartbeat=lambda: None, _models=lambda name: Model(),
    )  # fmt: skip
    result = wrapped(ctx, 3)
    assert (result["value"], result["model_calls"]) == ([0, 1, 2], 3)
    assert result["model_wall_s"] >= 0.0
    assert result["task_cpu_s"] >= 0.0
    assert (wrapped.name, wrapped.max_receives) == ("t", 2)


def test_the_probe_times_the_model_calls_apart_from_the_task_s_own_code() -> None:
    class SlowModel:
        def infer(self, inputs: Any, *, version: int | None = None) -> dict[str, Any]:
            time.sleep(0.05)
            return {}

    def task(ctx: TaskContext, payload: Any) -> None:
        ctx.model("m").infer({})

    wrapped = counting(Task("t", task))
    ctx = TaskContext(
        task_id="1", task_name="t", receive_count=1, logger=logging.getLogger("t"),
        _heartbeat=lambda: None, _models=lambda name: SlowModel(),
    )  # fmt: skip
    result = wrapped(ctx, None)
    assert result["model_wall_s"] >= 0.05  # a sleep lasts at least as long as asked
    assert result["task_cpu_s"] < result["model_wall_s"]  # sleeping takes no CPU


def test_instances_can_be_given_as_json(tmp_path: Path) -> None:
    path = tmp_path / "shapes.json"
    path.write_text(
        json.dumps({"instances": {"x1": {"vcpu": 4, "memory_gib": 8, "usd_per_hour": 0.2}}})
    )
    assert instance_shape("x1", load_instances(path)).vcpu == 4
    path.write_text(json.dumps({"instances": {"x1": {"vcpu": 4}}}))
    with pytest.raises(ConfigError, match="usd_per_hour"):
        load_instances(path)


def test_triton_is_unavailable_with_the_exact_reason(tmp_path: Path) -> None:
    assert "no --pytriton-python given" in str(triton_unavailable(None))
    missing = tmp_path / "venv" / "bin" / "python"
    assert triton_unavailable(missing) == (
        f"--pytriton-python {missing} does not exist: build it with `bash scripts/triton-venv.sh` "
        "(Debian's /usr/bin/python3.11 venv with nvidia-pytriton, onnxruntime, numpy) and pass "
        "--pytriton-python .venv-triton/bin/python"
    )


def test_ramp_up_and_drain_are_the_ends_of_the_run_outside_the_steady_window() -> None:
    from fleetinfer.bench.report import ramp_and_drain

    finishes = [103.0, 101.5, 102.0, 104.0, 109.0, 105.0]  # 2 workers, a long last task
    assert ramp_and_drain(100.0, finishes, workers=2) == {"ramp_s": 2.0, "drain_s": 4.0}
    assert ramp_and_drain(100.0, finishes, workers=4) == {"ramp_s": None, "drain_s": None}


def test_a_process_that_ends_mid_walk_has_no_descendants_rather_than_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child ending while the sampler walked /proc took the sampler thread down (the PSS of the
    rest of that round went missing): its /proc folder vanished between listing and reading."""
    ending = subprocess.Popen(["sleep", "30"])  # its /proc folder exists, then vanishes mid-walk
    gone = f"/proc/{ending.pid}/task"
    real_scandir, real_listdir = os.scandir, os.listdir

    def vanished(real: Any) -> Any:
        def call(path: Any = ".") -> Any:
            if os.fspath(path).startswith(gone):
                raise FileNotFoundError(2, "No such file or directory", os.fspath(path))
            return real(path)

        return call

    monkeypatch.setattr(os, "scandir", vanished(real_scandir))
    monkeypatch.setattr(os, "listdir", vanished(real_listdir))
    try:
        assert child_pids(ending.pid) == []
        assert ending.pid in child_pids(os.getpid())  # the walk above it goes on
    finally:
        ending.kill()
        ending.wait()
