"""The bench's call patterns and its `ray` mode, as far as they run without a Ray instance."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleetinfer.bench import ray_mode
from fleetinfer.bench.payloads import with_call_pattern
from fleetinfer.bench.ray_driver import model_names, run_task
from fleetinfer.bench.report import RATIOS, task_split
from fleetinfer.bench.runner import MODES, BenchConfig, TaskTiming, run_bench
from fleetinfer.client import InProcessModelClient
from fleetinfer.errors import InputError
from tests.helpers.tiny_models import affine_repository

PAYLOADS = [{"path": "a.npz", "model": "cdnet-l"}, {"path": "b.npz", "max_batch": 4}]


def test_the_per_window_pattern_makes_every_task_call_its_model_once_per_window() -> None:
    assert with_call_pattern(PAYLOADS, "per-window") == [
        {"path": "a.npz", "model": "cdnet-l", "max_batch": 1},
        {"path": "b.npz", "max_batch": 1},
    ]


def test_the_per_segment_pattern_leaves_the_batch_to_the_task_and_none_changes_nothing() -> None:
    assert with_call_pattern(PAYLOADS, "per-segment") == [
        {"path": "a.npz", "model": "cdnet-l"},
        {"path": "b.npz"},
    ]
    assert with_call_pattern(PAYLOADS, None) is PAYLOADS


def test_an_unknown_pattern_or_a_payload_that_is_not_an_object_is_refused_with_the_choices() -> (
    None
):
    with pytest.raises(InputError, match="per-segment, per-window, got 'per-call'"):
        with_call_pattern(PAYLOADS, "per-call")
    with pytest.raises(InputError, match="must be a JSON object; got 3"):
        with_call_pattern([3], "per-window")


def test_the_task_split_separates_model_calls_from_the_task_s_own_time() -> None:
    tasks = [TaskTiming(0.0, 1.0, 10, None, 0.25, 0.5), TaskTiming(1.0, 3.0, 20, None, 0.75, 0.7)]
    split = task_split(tasks)["task_split"]
    assert split == pytest.approx(
        {"wall_s": 1.5, "model_wall_s": 0.5, "own_wall_s": 1.0, "own_cpu_s": 0.6, "model_calls": 15}
    )
    assert task_split([TaskTiming(0.0, 1.0, 1)]) == {"task_split": {}}


def test_ray_is_a_mode_compared_with_shared_for_speed_and_memory() -> None:
    assert "ray" in MODES
    assert RATIOS["shared_vs_ray_node_pss"] == ("shared", "ray", "node_pss_mib")


def test_without_ray_installed_the_ray_row_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "ray" else real_find_spec(name)
    )
    repo = affine_repository(tmp_path / "repo")
    config = BenchConfig(
        target="tests.unit.test_bench_patterns:nothing", models=repo, payloads=(1,),
        modes=("ray",), rounds=1, workers=1, calibration_tasks=1,
    )  # fmt: skip
    monkeypatch.setattr("fleetinfer.bench.runner.calibrate", lambda config: _calibration())
    monkeypatch.setattr("fleetinfer.bench.runner.resolve_target", lambda target: None)
    run = run_bench(config)
    assert run.errors["ray"] == (
        "the ray mode needs the Python package 'ray', which is not installed: "
        "run `pip install 'fleetinfer[ray]'`"
    )
    assert run.runs["ray"] == []


def _calibration() -> Any:
    from fleetinfer.bench.runner import Calibration

    return Calibration(
        tasks=1, cpu_s_per_task=1.0, wall_s_per_task=1.0, model_calls_per_task=1.0, threads=1
    )


def test_a_ray_task_runs_the_task_code_with_its_model_calls_going_to_the_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run_task` is what each Ray task runs; here the holder is called directly, in process."""
    monkeypatch.setenv("FLEETINFER_BENCH_TARGET", "tests.unit.test_bench_patterns:double")
    client = InProcessModelClient(affine_repository(tmp_path / "repo"), intra_op_threads=1)
    calls: list[str] = []

    def holder(name: str, inputs: dict[str, Any], version: int | None) -> Any:
        calls.append(name)
        return client.model(name).infer(inputs, version=version)

    try:
        result = run_task("tests.unit.test_bench_patterns:double", str(tmp_path), holder, 3)
    finally:
        client.close()
    assert (result["model_calls"], result["error"], calls) == (3, None, ["affine"] * 3)
    assert result["finished_at"] >= result["started_at"]
    failed = run_task("tests.unit.test_bench_patterns:double", str(tmp_path), holder, "x")
    assert failed["error"] is not None
    assert failed["error"].startswith("TypeError")


def test_the_ray_driver_loads_only_the_models_the_payloads_name() -> None:
    assert model_names([{"model": "cdnet-l"}, {"model": "cdnet-l"}, {"path": "x"}, 3]) == [
        "cdnet-l"
    ]


def test_a_ray_round_that_fails_to_start_says_why(tmp_path: Path) -> None:
    """The driver's error line becomes the row's reason (a Python without Ray gives one)."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"payloads": []}))  # no key the driver needs: it fails at once
    with pytest.raises(ray_mode.RayRunError, match="KeyError"), ray_mode._driver(spec) as driver:
        ray_mode._message(driver, "ready_at")


# tasks for the tests above, found by `module:task`
from fleetinfer.task import App, TaskContext  # noqa: E402

app = App("patterns")


@app.task(name="double")
def double(ctx: TaskContext, payload: Any) -> list[float]:
    model = ctx.model("affine")
    return [
        float(model.infer({"x": np.full((1, 4), i, np.float32)})["y"][0, 0]) for i in range(payload)
    ]


@app.task(name="nothing")
def nothing(ctx: TaskContext, payload: Any) -> None:
    return None
