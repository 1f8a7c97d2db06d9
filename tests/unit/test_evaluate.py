"""Evaluation metrics on hand-made outcomes, and the data-folder checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from roadchange.evaluate import (
    EvaluationInputError,
    Outcome,
    SegmentFailure,
    compute_report,
    segment_files,
)
from roadchange.pipeline import SegmentDecision
from roadchange.world import STRUCTURAL_CHANGES, Label


def _outcome(true_type: str, predicted: bool, predicted_type: str | None = None) -> Outcome:
    changed = true_type != "none"
    label = Label(
        changed=changed,
        remap=true_type in STRUCTURAL_CHANGES,
        change_type=true_type,
        change_span_m=(100.0, 140.0) if changed else None,
    )
    types = (predicted_type or true_type,) if predicted else ()
    decision = SegmentDecision(
        segment_id="s",
        changed=predicted,
        remap=predicted and types[0] in STRUCTURAL_CHANGES,
        change_types=types,
        change_stations_m=(120.0,) if predicted else (),
        change_spans_m=((112.0, 128.0),) if predicted else (),
        confidence=0.9,
        score_logit=1.0 if predicted else -1.0,
        missing_paint_px=0.0,
        windows=25,
        model_calls=1,
    )
    return Outcome(label, decision)


OUTCOMES = [
    _outcome("lane_added", True),  # tp, remap tp
    _outcome("lane_shift", True, "marking_deleted"),  # tp, wrong type, remap fn
    _outcome("marking_deleted", False),  # fn
    _outcome("none", False),  # tn
    _outcome("none", False),  # tn
    _outcome("none", True, "lane_added"),  # fp, remap fp
]


def test_report_computes_the_binary_metrics_and_macc_from_the_confusion_matrix() -> None:
    report = compute_report(OUTCOMES, [], 1.5)
    assert report.confusion == {"tp": 2, "fp": 1, "tn": 2, "fn": 1}
    assert report.accuracy == pytest.approx(4 / 6)
    assert report.precision == pytest.approx(2 / 3)
    assert report.recall == pytest.approx(2 / 3)
    assert report.f1 == pytest.approx(2 / 3)
    assert report.macc == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_report_computes_remap_f1_type_accuracy_and_per_type_recall() -> None:
    report = compute_report(OUTCOMES, [], 1.5)
    assert report.remap_f1 == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert report.type_accuracy == pytest.approx(1 / 2)
    assert report.per_type_recall == {
        "none": pytest.approx(2 / 3),
        "lane_added": 1.0,
        "lane_shift": 1.0,
        "marking_deleted": 0.0,
    }


def test_report_counts_failures_and_is_json_safe() -> None:
    report = compute_report(OUTCOMES, [SegmentFailure("/x/bad.seg", "bad.seg: truncated")], 2.0)
    data = report.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["segments"] == 6
    assert data["failed"] == 1
    assert data["failures"] == [{"path": "/x/bad.seg", "error": "bad.seg: truncated"}]
    assert data["windows"] == 150
    assert data["seconds"] == 2.0


def test_report_of_nothing_has_zero_metrics_rather_than_a_division_error() -> None:
    report = compute_report([], [], 0.0)
    assert (report.segments, report.f1, report.macc) == (0, 0.0, 0.0)


def test_a_missing_data_folder_is_a_typed_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(EvaluationInputError, match="nowhere"):
        segment_files(tmp_path / "nowhere")


def test_a_folder_without_segment_files_is_a_typed_error_saying_how_to_make_some(
    tmp_path: Path,
) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(EvaluationInputError, match="roadchange generate"):
        segment_files(tmp_path)
