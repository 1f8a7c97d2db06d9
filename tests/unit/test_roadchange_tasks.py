from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleetinfer.task import Reject, TaskContext
from roadchange.generate import generate_dataset
from roadchange.pipeline import OnnxModel, SegmentDecision, shipped_model_path
from roadchange.tasks import check_segment, decision_from_json


def context(model: Any) -> TaskContext:
    return TaskContext(
        task_id="t-1",
        task_name="check_segment",
        receive_count=1,
        logger=logging.getLogger("test"),
        _heartbeat=lambda: None,
        _models=lambda name: model,
    )


def test_a_decision_survives_the_json_round_trip_through_a_results_store() -> None:
    decision = SegmentDecision(
        segment_id="default-1-000002", changed=True, remap=True, change_types=("lane_added",),
        change_stations_m=(120.5,), change_spans_m=((100.0, 141.0),), confidence=0.93,
        score_logit=2.5, missing_paint_px=12.0, windows=25, model_calls=1,
    )  # fmt: skip
    assert decision_from_json(decision.to_json()) == decision


def test_the_task_checks_a_segment_file_with_the_model_it_is_given(tmp_path: Path) -> None:
    [path] = generate_dataset(tmp_path, preset="default", segments=1, seed=31337)
    model = OnnxModel(shipped_model_path(), threads=1)
    result = check_segment(context(model), {"path": str(path)})
    assert result["segment_id"] == path.stem
    assert result["windows"] >= 19  # 300 m segments and up
    assert isinstance(result["changed"], bool)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"file": "x"}, "expected a payload like"),
        ("just a string", "expected a payload like"),
        ({"path": "x.npz", "max_batch": 0}, "max_batch"),
        ({"path": "x.npz", "model": 3}, "field 'model' must be a model name"),
        ({"path": "x.npz", "model": ""}, "field 'model' must be a model name"),
    ],
)
def test_a_bad_payload_is_rejected_not_retried(payload: Any, reason: str) -> None:
    with pytest.raises(Reject, match=reason):
        check_segment(context(None), payload)


def test_a_corrupted_segment_file_is_rejected_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    with pytest.raises(Reject, match=r"broken\.npz"):
        check_segment(context(None), {"path": str(path)})


@pytest.mark.parametrize(("payload_model", "asked"), [(None, "cdnet"), ("cdnet-l", "cdnet-l")])
def test_the_task_asks_for_the_payload_model_defaulting_to_cdnet(
    tmp_path: Path, payload_model: str | None, asked: str
) -> None:
    [path] = generate_dataset(tmp_path, preset="default", segments=1, seed=31337)
    model = OnnxModel(shipped_model_path(), threads=1)
    names: list[str] = []

    def models(name: str) -> Any:
        names.append(name)
        return model

    ctx = TaskContext(
        task_id="t-2", task_name="check_segment", receive_count=1,
        logger=logging.getLogger("test"), _heartbeat=lambda: None, _models=models,
    )  # fmt: skip
    payload = {"path": str(path)} | ({} if payload_model is None else {"model": payload_model})
    check_segment(ctx, payload)
    assert names == [asked]
