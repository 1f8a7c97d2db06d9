"""`benchmarks/server_bench.py` runs end to end (a short run: its numbers are not checked here,
its rows and their fields are), so the README's command cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_server_bench_run_reports_every_row_with_its_fields(tmp_path: Path) -> None:
    out = tmp_path / "server_bench.json"
    command = [
        sys.executable, "benchmarks/server_bench.py", "--rounds", "1", "--seconds", "0.3",
        "--latency-requests", "20", "--memory-workers", "2", "--json", str(out),
        "--only", "throughput", "overhead", "memory",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "FLEETINFER_PYTRITON_PYTHON"}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    throughput = report["throughput"]
    for key in (
        "inprocess_samples_per_s", "shared_samples_per_s", "shared_in_place_samples_per_s",
        "relay_samples_per_s", "shared_queued_samples_per_s",
    ):  # fmt: skip
        assert throughput[key] > 0
    ratios = {"ratio_median", "ratio_in_place_median", "ratio_relay_median", "ratio_queued_median"}
    assert ratios | {"ratio_in_place_to_relay_median"} <= throughput.keys()
    assert throughput["queued_clients"] == 4
    assert throughput["native_paths"] is True  # the suite runs where the C paths are built
    assert throughput["ratio_in_place_python_median"] > 0
    assert throughput["ratio_native_to_python_median"] > 0
    cpu = throughput["cpu_us_per_call"]
    assert cpu["inprocess"]["clients"] > 0
    assert cpu["inprocess"]["server"] == 0
    for variant in ("shared_in_place", "shared_in_place_python", "shared", "relay"):
        assert cpu[variant]["clients"] > 0
        assert cpu[variant]["server"] > 0
        assert cpu[variant]["total"] >= max(cpu[variant]["clients"], cpu[variant]["server"])
    for row in (report["overhead"], report["overhead"]["fixed_cost_16_bytes"]):
        assert row["shared_median_us"] > 0
        assert row["inprocess_median_us"] > 0
    for memory in (report["memory"], report["memory"]["cdnet_l"]):
        forked = memory["forked"]
        for row in (memory, forked):
            assert 0 < row["shared_clients_total_pss_mb"] < row["inprocess_total_pss_mb"]
        assert memory["server_pss_mb"] > 0
    assert report["triton"]["ran"] is False
    assert "--pytriton-python" in report["triton"]["why"]
