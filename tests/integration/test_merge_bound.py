"""`benchmarks/merge_bound.py` runs end to end on the example app, and its bound is the formula
its docstring gives, computed from the numbers it reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_bound_is_computed_from_the_measured_split_and_merge_gains() -> None:
    command = [
        sys.executable, "benchmarks/merge_bound.py", "--target", "examples.tinyapp.tasks:score",
        "--models", "examples/tinyapp/models", "--payloads", "examples/tinyapp/payloads.jsonl",
        "--tasks", "4", "--rounds", "2", "--batches", "2,4",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    split = report["task_split"]
    own, model = split["own_cpu_s_per_task"], split["model_cpu_s_per_task"]
    assert own > 0
    assert model > 0
    assert split["model_calls_per_task"] == pytest.approx((4 + 5 + 6 + 4) / 4)
    tiny = report["models"]["tiny"]
    assert tiny["input_shapes"] == {"x": [1, 64]}
    assert set(tiny["merge"]) == {"2", "4"}
    for n, row in tiny["merge"].items():
        gain = row["separate_cpu_us_per_sample"] / row["merged_cpu_us_per_sample"]
        assert row["gain"] == pytest.approx(gain)
        bound = (own + model) / (own + model / gain)
        assert tiny["bound_shared_vs_isolated"][n] == pytest.approx(bound)
        assert tiny["bound_model_calls_only"][n] == pytest.approx(gain)
    assert isinstance(report["host"]["avx512_vnni"], bool)
