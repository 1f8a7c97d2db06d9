"""`fleetinfer bench` on the example app, as the README shows it: real nodes, real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAYLOADS = ROOT / "examples" / "tinyapp" / "payloads.jsonl"
NODE_MODES = ("isolated", "shared")
MODES = ("isolated-per-task", *NODE_MODES)
TASKS, ROUNDS, WORKERS = 10, 2, 2


def bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "fleetinfer", "bench", "examples.tinyapp.tasks:score",
        "--models", "examples/tinyapp/models", "--payloads", str(PAYLOADS),
        "--workers", str(WORKERS), "--out", str(tmp_path), "--json", "--calibration-tasks", "3",
        *args,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "FLEETINFER_PYTRITON_PYTHON"}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    assert json.loads((tmp_path / "bench.json").read_text()) == report
    return report


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    return bench(
        out, "--tasks", str(TASKS), "--rounds", str(ROUNDS), "--modes", ",".join(MODES)
    ) | {"_out": str(out)}


def expected_model_calls() -> int:
    """The tiny task calls its model `n` times: the calls of the first TASKS payloads."""
    payloads = [json.loads(line) for line in PAYLOADS.read_text().splitlines() if line.strip()]
    return sum(payloads[i % len(payloads)]["n"] for i in range(TASKS))


def test_every_mode_ran_every_task_in_every_round(report: dict[str, Any]) -> None:
    assert list(report["modes"]) == list(MODES)
    assert report["bench"]["order"] == [list(MODES), [*MODES[1:], MODES[0]]]
    for mode, summary in report["modes"].items():
        assert "error" not in summary, (mode, summary)
        assert summary["tasks"] == TASKS
        assert summary["succeeded_per_round"] == [TASKS] * ROUNDS
        assert summary["model_calls_per_round"] == [expected_model_calls()] * ROUNDS


def test_rates_latencies_and_cpu_are_consistent(report: dict[str, Any]) -> None:
    cores = report["machine"]["cores"]
    for summary in report["modes"].values():
        for r in summary["rounds"]:
            assert r["tasks_per_min"] == pytest.approx(TASKS * 60 / r["wall_s"])
            assert r["model_calls_per_s"] == pytest.approx(r["model_calls"] / r["wall_s"])
            assert 0 < r["first_task_s"] <= r["ramp_s"] <= r["wall_s"] <= r["run_s"]
            assert 0 <= r["drain_s"] <= r["wall_s"] - r["ramp_s"]
            assert 0 < r["latency_p50_s"] <= r["latency_p95_s"]
            assert r["cpu_utilization"] == pytest.approx(r["cpu_s"] / (r["run_s"] * cores))
            assert 0 < r["cpu_utilization"] <= 1.05
        assert summary["tasks_per_min"] > 0
        assert summary["model_calls_per_s"] > 0


def test_memory_is_measured_per_process_and_for_the_node(report: dict[str, Any]) -> None:
    for mode, summary in report["modes"].items():
        pss = summary["pss_mib"]
        assert summary["node_pss_mib"] > 0
        assert summary["worker_pss_mib"] > 0
        assert summary["node_pss_mib"] <= summary["node_pss_peak_mib"]
        assert pss["agent"] > 0
        if mode in NODE_MODES:
            assert {f"worker_{i + 1}" for i in range(WORKERS)} <= set(pss)
        else:
            assert "task_process_1" in pss
    assert report["modes"]["shared"]["pss_mib"]["model_server"] > 0
    assert "model_server" not in report["modes"]["isolated"]["pss_mib"]


def test_efficiency_is_measured_over_the_warm_one_process_limit(report: dict[str, Any]) -> None:
    limit = report["limit"]
    assert limit["cpu_s_per_task"] > 0
    assert limit["calibration_tasks"] == 3
    assert len(limit["cpu_s_per_task_rounds"]) == ROUNDS
    assert limit["cpu_s_per_task"] in limit["cpu_s_per_task_rounds"]
    assert limit["tasks_per_min"] == pytest.approx(limit["cores"] * 60 / limit["cpu_s_per_task"])
    for summary in report["modes"].values():
        assert summary["limit_tasks_per_min"] == limit["tasks_per_min"]
        rate = summary["tasks_per_min_steady"] or summary["tasks_per_min"]
        assert summary["efficiency"] == pytest.approx(rate / limit["tasks_per_min"])
        assert summary["efficiency_whole_run"] == pytest.approx(
            summary["tasks_per_min"] / limit["tasks_per_min"]
        )


def test_each_mode_is_projected_onto_the_instance(report: dict[str, Any]) -> None:
    assert report["instance"]["name"] == "r6i.8xlarge"
    for mode, summary in report["modes"].items():
        p = summary["projection"]
        assert p["mode"] == mode
        assert p["instance"] == "r6i.8xlarge"
        assert p["workers"] == min(p["workers_by_memory"], p["workers_by_cores"])
        assert p["bound_by"] in ("memory", "cores")
        assert p["tasks_per_usd"] == pytest.approx(p["tasks_per_min"] * 60 / 2.016)


def test_each_node_task_s_time_is_split_between_its_model_calls_and_its_own_code(
    report: dict[str, Any],
) -> None:
    for mode in NODE_MODES:
        split = report["modes"][mode]["task_split"]
        assert 0 < split["model_wall_s"] <= split["wall_s"]
        assert split["own_wall_s"] == pytest.approx(
            split["wall_s"] - split["model_wall_s"], abs=1e-3
        )
        assert split["own_cpu_s"] > 0
        assert split["model_calls"] == expected_model_calls() / TASKS


def test_the_per_task_processes_are_decomposed(report: dict[str, Any]) -> None:
    d = report["modes"]["isolated-per-task"]["decomposition"]
    assert d["processes"] == TASKS * ROUNDS
    phases = ("process_start_s", "imports_s", "model_load_s", "compute_s", "exit_s")
    assert all(d[p] >= 0 for p in phases)
    assert d["model_load_s"] > 0
    assert d["compute_s"] > 0
    assert d["imports_share"] + d["model_load_share"] + d["compute_share"] < 1


def test_ratios_pair_modes_of_the_same_round_and_the_chart_is_written(
    report: dict[str, Any],
) -> None:
    ratios = report["ratios"]
    assert ratios["shared_vs_isolated_tasks_per_min"] > 0
    assert ratios["shared_vs_isolated_per_task_tasks_per_min"] > 0
    assert ratios["shared_vs_triton_tasks_per_min"] is None  # triton was not asked for
    assert ratios["shared_vs_triton_tasks_per_min_steady"] is None
    png = Path(report["_out"]) / "bench.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_triton_row_says_why_when_its_python_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "no-venv" / "bin" / "python"
    report = bench(
        tmp_path, "--tasks", "2", "--rounds", "1", "--modes", "isolated,triton",
        "--pytriton-python", str(missing),
    )  # fmt: skip
    assert report["modes"]["triton"] == {
        "error": f"--pytriton-python {missing} does not exist: build it with "
        "`bash scripts/triton-venv.sh` (Debian's /usr/bin/python3.11 venv with nvidia-pytriton, "
        "onnxruntime, numpy) and pass --pytriton-python .venv-triton/bin/python"
    }
    assert report["modes"]["isolated"]["succeeded_per_round"] == [2]


@pytest.mark.parametrize(
    ("payloads", "args", "code", "message"),
    [
        ('{"seed": 1, "n": 1}\n{"seed": 2,\n', (), 4, "bad.jsonl:2: not a JSON payload"),
        ('{"seed": 1, "n": 1}\n', ("--modes", "shared,gpu"), 3, "--modes must name each of"),
        ('{"seed": 1, "n": 1}\n', ("--instance", "z9.huge"), 3, "unknown instance shape 'z9.huge'"),
    ],
)
def test_bad_input_and_configuration_exit_with_their_named_codes(
    tmp_path: Path, payloads: str, args: tuple[str, ...], code: int, message: str
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(payloads)
    command = [
        sys.executable, "-m", "fleetinfer", "bench", "examples.tinyapp.tasks:score",
        "--models", "examples/tinyapp/models", "--payloads", str(bad), "--out", str(tmp_path),
        *args,
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == code, done.stderr
    assert message in " ".join(done.stderr.split())


def test_the_zygote_counts_in_the_node_and_with_no_preload_there_is_none(
    report: dict[str, Any], tmp_path: Path
) -> None:
    assert report["bench"]["preload"] is True  # the default, as `fleetinfer run`
    for mode in NODE_MODES:
        roles = report["modes"][mode]["pss_mib"]
        assert roles["zygote"] > 0
        assert {f"worker_{i}" for i in range(1, WORKERS + 1)} <= set(roles)
    shared = report["modes"]["shared"]
    assert shared["node_pss_mib"] >= shared["pss_mib"]["zygote"] + shared["pss_mib"]["model_server"]
    fresh = bench(tmp_path, "--tasks", "6", "--rounds", "1", "--modes", "shared", "--no-preload")
    assert fresh["bench"]["preload"] is False
    assert fresh["modes"]["shared"]["succeeded_per_round"] == [6]
    assert "zygote" not in fresh["modes"]["shared"]["pss_mib"]
