"""roadchange as fleetinfer tasks: one task per road segment, the model reached through the node.

    fleetinfer run roadchange.tasks:check_segment --models roadchange/src/roadchange/models

The payload is `{"path": "<segment file>"}`, optionally with `"max_batch"` (windows per model
call, an integer >= 1) and `"model"` (the model's name in the repository, default `"cdnet"`; the
heavier `"cdnet-l"` is for benchmarks); the result is the segment decision as JSON. A missing or
corrupted segment file, or a field of the wrong type, is bad input: the task is rejected (no retry)
with the reason. The model is `ctx.model(name)`, so the same code runs against an in-process ONNX
Runtime session, the node's shared model server, or Triton.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleetinfer.task import App, Reject, TaskContext
from roadchange.errors import SegmentFileError
from roadchange.pipeline import DEFAULT_MAX_BATCH, SegmentDecision
from roadchange.pipeline import check_segment as decide_segment

MODEL_NAME = "cdnet"

app = App("roadchange")


def _payload_path(payload: Any) -> Path:
    if not isinstance(payload, dict) or not isinstance(payload.get("path"), str):
        raise Reject(f"expected a payload like {{'path': '<segment file>'}}, got {payload!r:.120}")
    return Path(payload["path"])


def _max_batch(payload: dict[str, Any]) -> int:
    value = payload.get("max_batch", DEFAULT_MAX_BATCH)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise Reject(f"payload field 'max_batch' must be an integer >= 1, got {value!r}")
    return value


def _model_name(payload: dict[str, Any]) -> str:
    value = payload.get("model", MODEL_NAME)
    if not isinstance(value, str) or not value:
        raise Reject(
            f"payload field 'model' must be a model name (a non-empty string such as 'cdnet' or "
            f"'cdnet-l'), got {value!r:.120}"
        )
    return value


@app.task(name="check_segment", max_receives=3)
def check_segment(ctx: TaskContext, payload: Any) -> dict[str, Any]:
    """Check one road segment file for map changes with the payload's model (default cdnet)."""
    path = _payload_path(payload)
    try:
        model = ctx.model(_model_name(payload))
        decision = decide_segment(path, model, max_batch=_max_batch(payload))
    except SegmentFileError as exc:
        raise Reject(str(exc)) from exc
    return decision.to_json()


def decision_from_json(data: dict[str, Any]) -> SegmentDecision:
    """The inverse of `SegmentDecision.to_json()`, for results read back from a store."""
    return SegmentDecision(
        segment_id=str(data["segment_id"]),
        changed=bool(data["changed"]),
        remap=bool(data["remap"]),
        change_types=tuple(data["change_types"]),
        change_stations_m=tuple(float(s) for s in data["change_stations_m"]),
        change_spans_m=tuple((float(a), float(b)) for a, b in data["change_spans_m"]),
        confidence=float(data["confidence"]),
        score_logit=float(data["score_logit"]),
        missing_paint_px=float(data["missing_paint_px"]),
        windows=int(data["windows"]),
        model_calls=int(data["model_calls"]),
    )
