"""Workloads plug into `fleetinfer compile` through entry points; fleetinfer never imports them."""

from __future__ import annotations

import re
from pathlib import Path

from fleetinfer.cli.compile import calibration_source, evaluator_for
from fleetinfer.compile.plugins import load_plugin, plugin_names
from roadchange.compile_plugin import RoadchangeCalibration, RoadchangeEvaluator

SRC = Path(__file__).resolve().parents[2] / "src" / "fleetinfer"


def test_roadchange_is_found_as_a_registered_compile_task_plugin() -> None:
    assert "roadchange" in plugin_names()
    assert load_plugin("no-such-workload") is None
    calibration = calibration_source("roadchange", Path("unused"), "cdnet", segments=3)
    assert isinstance(calibration, RoadchangeCalibration)
    assert calibration.segments == 3
    evaluator = evaluator_for("roadchange", Path("unused"), "cdnet", segments=5, seed=7)
    assert isinstance(evaluator, RoadchangeEvaluator)
    assert (evaluator.segments, evaluator.seed) == (5, 7)


def test_the_runtime_imports_roadchange_nowhere() -> None:
    """Workloads plug in through entry points (compile's tasks, the demo): none by name."""
    importing = {
        path.relative_to(SRC).as_posix()
        for path in SRC.rglob("*.py")
        if re.search(r"^\s*(from|import) roadchange\b", path.read_text(), flags=re.MULTILINE)
    }
    assert importing == set()
