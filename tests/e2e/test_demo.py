"""`fleetinfer demo` as a user runs it: generate, enqueue, run a node, summarise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_processes_every_segment_and_prints_a_summary(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "fleetinfer", "demo", "--segments", "12", "--workers", "2"]
    command += ["--workdir", str(tmp_path / "demo"), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["tasks"] == summary["succeeded"] == 12
    assert summary["workers"] == 2
    assert summary["quality"]["segments"] == 12
    assert summary["quality"]["failed"] == 0
    assert summary["model_calls"] >= 12
    assert summary["tasks_per_min"] > 0
    assert summary["pss_mib"]["node_total"] > summary["pss_mib"]["agent"] > 0
    assert 0.0 <= summary["quality"]["macc"] <= 1.0
