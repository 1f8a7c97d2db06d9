"""Segment pipeline: batching, output validation and window aggregation (synthetic tensors)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from roadchange.pipeline import (
    AggregationRule,
    ModelLoadError,
    ModelOutputError,
    OnnxModel,
    WindowOutputs,
    aggregate_windows,
    missing_paint_px,
    run_windows,
    segment_score,
    shipped_model_repository,
)
from roadchange.raster import CHANNELS
from roadchange.world import CHANGE_TYPES

Array = np.ndarray[Any, Any]
STATIONS = np.arange(8.0, 400.0, 16.0)  # 25 windows, 16 m apart


class MeanModel:
    """changed logit = mean of the window minus 0.5; counts calls and samples."""

    def __init__(self, *, drop: str | None = None) -> None:
        self.calls: list[int] = []
        self.drop = drop

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        x = inputs["raster"]
        self.calls.append(x.shape[0])
        score = x.reshape(x.shape[0], -1).mean(axis=1) - 0.5
        result = {
            "changed_logit": score.astype(np.float32),
            "remap_logit": -score.astype(np.float32),
            "type_logits": np.tile(np.arange(7, dtype=np.float32), (x.shape[0], 1)),
        }
        if self.drop:
            del result[self.drop]
        return result


def _outputs(changed: Array, *, change_type: int = 3, remap: float = 2.0) -> WindowOutputs:
    types = np.full((changed.size, len(CHANGE_TYPES)), -4.0, dtype=np.float32)
    types[:, change_type] = 4.0
    return WindowOutputs(
        changed.astype(np.float32), np.full(changed.size, remap, np.float32), types
    )


def test_segment_score_is_the_mean_of_the_top_k_window_logits() -> None:
    assert segment_score(np.array([-3.0, 5.0, 1.0, 2.0]), 2) == pytest.approx(3.5)
    assert segment_score(np.array([-3.0]), 2) == pytest.approx(-3.0)


def test_segment_without_windows_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one window"):
        segment_score(np.zeros(0), 2)


def test_all_windows_below_threshold_give_an_unchanged_confident_decision() -> None:
    decision = aggregate_windows("s", STATIONS, 400.0, _outputs(np.full(25, -5.0)))
    assert not decision.changed
    assert not decision.remap
    assert decision.change_types == ()
    assert decision.change_spans_m == ()
    assert decision.confidence > 0.99
    assert decision.windows == 25


def test_one_lonely_positive_window_is_outvoted_by_top_two_averaging() -> None:
    logits = np.full(25, -6.0)
    logits[10] = 3.0
    assert not aggregate_windows("s", STATIONS, 400.0, _outputs(logits)).changed
    assert aggregate_windows(
        "s", STATIONS, 400.0, _outputs(logits), rule=AggregationRule(top_k=1)
    ).changed


def test_adjacent_positive_windows_give_the_change_type_stations_and_one_merged_span() -> None:
    logits = np.full(25, -6.0)
    logits[[10, 11, 12]] = 4.0
    decision = aggregate_windows("s", STATIONS, 400.0, _outputs(logits, change_type=3))
    assert decision.changed
    assert decision.remap
    assert decision.change_types == (CHANGE_TYPES[3],)
    assert decision.change_stations_m == (168.0, 184.0, 200.0)
    assert decision.change_spans_m == ((160.0, 208.0),)
    assert decision.confidence > 0.98


def test_two_separate_changes_give_two_spans_and_a_negative_remap_logit_gives_no_remap() -> None:
    logits = np.full(25, -6.0)
    logits[[0, 1, 20]] = 4.0
    decision = aggregate_windows("s", STATIONS, 400.0, _outputs(logits, remap=-1.0))
    assert decision.change_spans_m == ((0.0, 32.0), (320.0, 336.0))
    assert not decision.remap


def test_decision_to_json_is_json_safe() -> None:
    logits = np.full(25, -6.0)
    logits[[3, 4]] = 2.0
    data = aggregate_windows("seg-1", STATIONS, 400.0, _outputs(logits), model_calls=1).to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["changed"] is True
    assert data["segment_id"] == "seg-1"


def test_windows_are_sent_in_batches_of_at_most_max_batch() -> None:
    model = MeanModel()
    rasters = np.random.default_rng(0).random((30, 2, 4, 4), dtype=np.float32)
    outputs, calls = run_windows(model, rasters, max_batch=8)
    assert calls == 4
    assert model.calls == [8, 8, 8, 6]
    np.testing.assert_allclose(outputs.changed_logit, rasters.reshape(30, -1).mean(1) - 0.5)


def test_all_windows_of_a_segment_go_in_one_call_by_default() -> None:
    model = MeanModel()
    _, calls = run_windows(model, np.zeros((25, 2, 4, 4), np.float32))
    assert (calls, model.calls) == (1, [25])


def test_a_model_without_the_cdnet_outputs_is_a_typed_error_naming_the_output() -> None:
    with pytest.raises(ModelOutputError, match="type_logits"):
        run_windows(MeanModel(drop="type_logits"), np.zeros((3, 2, 4, 4), np.float32))


def test_a_missing_model_file_is_a_typed_error_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"nope\.onnx"):
        OnnxModel(tmp_path / "nope.onnx")


def test_a_file_that_is_not_onnx_is_a_typed_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        OnnxModel(bad)


def test_the_shipped_model_repository_is_the_models_folder_of_the_package() -> None:
    root = shipped_model_repository()
    assert root.name == "models"
    assert root.parent.name == "roadchange"
    assert root.is_dir()


def _window_with_line(*, dash_rows: range | None, coverage: float) -> Array:
    """One 9-channel 128x128 window: a mapped dashed line in column 60, drive dashes where told."""
    raster = np.zeros((1, len(CHANNELS), 128, 128), np.float32)
    raster[0, CHANNELS.index("map_dashed"), :, 60] = 1.0
    raster[0, CHANNELS.index("drive_coverage")] = coverage
    for start in dash_rows or ():
        raster[0, CHANNELS.index("drive_dashed"), start : start + 12, 61] = 0.5  # 3 m dash
    return raster


def test_a_covered_mapped_line_without_any_drive_paint_counts_as_missing_paint() -> None:
    assert missing_paint_px(_window_with_line(dash_rows=None, coverage=1.0)).tolist() == [128.0]


def test_a_dashed_line_seen_every_twelve_metres_has_no_missing_paint() -> None:
    dashes = range(0, 128, 48)  # a 3 m dash every 12 m
    assert missing_paint_px(_window_with_line(dash_rows=dashes, coverage=1.0)).tolist() == [0.0]


def test_a_line_no_drive_covered_is_not_missing_paint() -> None:
    assert missing_paint_px(_window_with_line(dash_rows=None, coverage=0.25)).tolist() == [0.0]


def test_missing_paint_alone_makes_a_segment_changed_as_a_deleted_marking() -> None:
    missing = np.zeros(25, np.float32)
    missing[[7, 8]] = 120.0
    decision = aggregate_windows(
        "s", STATIONS, 400.0, _outputs(np.full(25, -6.0)), missing_paint=missing
    )
    assert decision.changed
    assert not decision.remap
    assert decision.change_types == ("marking_deleted",)
    assert decision.change_spans_m == ((112.0, 144.0),)
    assert decision.missing_paint_px == pytest.approx(120.0)


def test_missing_paint_below_the_threshold_changes_nothing() -> None:
    missing = np.full(25, 40.0, np.float32)
    decision = aggregate_windows(
        "s", STATIONS, 400.0, _outputs(np.full(25, -6.0)), missing_paint=missing
    )
    assert not decision.changed


def test_the_runtime_modules_never_import_torch() -> None:
    code = (
        "import sys, roadchange.pipeline, roadchange.evaluate, roadchange.cli; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=120).returncode == 0
