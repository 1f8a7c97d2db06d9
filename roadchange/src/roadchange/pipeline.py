"""The segment pipeline: one road segment in, one change decision out (numpy + onnxruntime only).

`check_segment` loads a segment file (or takes a `Segment`), slides overlapping road-aligned windows
along the road (`roadchange.raster.window_stations`, 400 m give at least 24 windows), calls the model
on all windows in a few batched calls, and aggregates the window outputs into a `SegmentDecision`:

- the segment score is the mean of the `top_k` highest window `changed_logit`s (one window can be a
  fluke; a real change is seen by the overlapping windows around it), and the segment is changed
  when the score is above `threshold_logit` (the shipped model is calibrated so that 0 is the
  threshold: its changed bias was shifted by the threshold chosen on validation seeds);
- the flagged windows (logit above `window_threshold_logit`, at least the best one) give the
  stations and spans of the change, the change types (type probabilities weighted by the window's
  change probability) and the remap decision (mean remap logit over flagged windows);
- a classical cue backs the CNN on the faintest change, a deleted marking: `missing_paint_px`
  counts mapped line pixels the drives covered but never saw paint near; when the top-k mean
  over windows reaches `missing_paint_px` (90, chosen on the validation seeds 900/901, indices
  0-149: default unchanged segments stay below 45, deleted markings above 94), the segment is
  changed with type `marking_deleted` even if the CNN says no.

The pipeline never reads `segment.label`: only `roadchange.evaluate` does.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from roadchange.errors import RoadchangeError
from roadchange.raster import CHANNELS, Allocate, rasterize_windows, window_stations
from roadchange.segfile import read_segment
from roadchange.world import CHANGE_TYPES, Segment

INPUT_NAME = "raster"
CHANGED_OUTPUT, REMAP_OUTPUT, TYPE_OUTPUT = "changed_logit", "remap_logit", "type_logits"
DEFAULT_MAX_BATCH = 64
MISSING_PAINT_ROWS = 24
"""Paint searched +-6 m along the road: a dashed line (3 m dash, 9 m gap) always has some there."""
MISSING_PAINT_COLS = 3
"""... and +-0.75 m across it (drives are aligned to the map; lines curve a little in a window)."""
MISSING_PAINT_TYPE = "marking_deleted"

Array = np.ndarray[Any, Any]


class ModelLoadError(RoadchangeError):
    """A model file is missing or not a loadable ONNX model."""


class ModelOutputError(RoadchangeError):
    """The model answered without the outputs CDNet defines (wrong model or wrong version)."""


class ModelLike(Protocol):
    """Anything that runs CDNet: `OnnxModel` here, or a fleetinfer `ctx.model("cdnet")` handle."""

    def infer(self, inputs: Mapping[str, Array]) -> Mapping[str, Array]: ...


class OnnxModel:
    """A plain onnxruntime session; `threads=0` lets onnxruntime pick the intra-op thread count."""

    def __init__(self, path: Path | str, *, threads: int = 0) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"model file {self.path} does not exist: pass a model.onnx path")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"{self.path} is not a loadable ONNX model: {exc}") from exc

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        names = [o.name for o in self._session.get_outputs()]
        values = self._session.run(names, dict(inputs))
        return dict(zip(names, values, strict=True))


def shipped_model_repository() -> Path:
    """The model repository shipped inside the package (`roadchange/models`)."""
    return Path(str(importlib.resources.files("roadchange") / "models"))


def shipped_model_path(name: str = "cdnet") -> Path:
    """`model.onnx` of the newest shipped version of `name` (`cdnet` or `cdnet-l`)."""
    folder = shipped_model_repository() / name
    versions = sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit())
    if not versions:
        raise ModelLoadError(
            f"no shipped model {name!r} under {folder}: expected {name}/1/model.onnx"
        )
    return folder / str(versions[-1]) / "model.onnx"


@dataclass(frozen=True, slots=True)
class AggregationRule:
    """How window outputs become a segment decision (see the module docstring)."""

    top_k: int = 2
    threshold_logit: float = 0.0
    window_threshold_logit: float = 0.0
    remap_threshold_logit: float = 0.0
    secondary_type_share: float = 0.5
    missing_paint_px: float = 90.0
    missing_paint_px_per_logit: float = 10.0


DEFAULT_RULE = AggregationRule()


@dataclass(frozen=True, slots=True)
class WindowOutputs:
    """The model's answer for the windows of one segment, validated."""

    changed_logit: Array  # (N,) float32
    remap_logit: Array  # (N,) float32
    type_logits: Array  # (N, len(CHANGE_TYPES)) float32


@dataclass(frozen=True, slots=True)
class SegmentDecision:
    """What the pipeline says about one segment. `to_json()` gives a JSON-safe dict."""

    segment_id: str
    changed: bool
    remap: bool
    change_types: tuple[str, ...]
    change_stations_m: tuple[float, ...]
    change_spans_m: tuple[tuple[float, float], ...]
    confidence: float
    score_logit: float
    missing_paint_px: float
    windows: int
    model_calls: int

    def to_json(self) -> dict[str, Any]:
        return {
            "segment_id": self.segment_id,
            "changed": self.changed,
            "remap": self.remap,
            "change_types": list(self.change_types),
            "change_stations_m": [round(s, 3) for s in self.change_stations_m],
            "change_spans_m": [[round(a, 3), round(b, 3)] for a, b in self.change_spans_m],
            "confidence": round(self.confidence, 6),
            "score_logit": round(self.score_logit, 6),
            "missing_paint_px": round(self.missing_paint_px, 3),
            "windows": self.windows,
            "model_calls": self.model_calls,
        }


def segment_score(changed_logit: Array, top_k: int) -> float:
    """Mean of the `top_k` largest window logits (all of them when there are fewer)."""
    if changed_logit.size == 0:
        raise ValueError("a segment needs at least one window")
    k = max(1, min(top_k, changed_logit.size))
    return float(np.sort(changed_logit)[-k:].mean())


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _softmax(logits: Array) -> Array:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs: Array = shifted / shifted.sum(axis=-1, keepdims=True)
    return probs


def _any_nearby(mask: Array, rows: int, cols: int) -> Array:
    """(N, H, W) bool: is any pixel of `mask` within +-rows and +-cols (summed-area table)?"""
    n, h, w = mask.shape
    table = np.zeros((n, h + 1, w + 1), np.int32)
    table[:, 1:, 1:] = mask.astype(np.int32).cumsum(axis=1).cumsum(axis=2)
    r0, r1 = np.clip(np.arange(h) - rows, 0, h), np.clip(np.arange(h) + rows + 1, 0, h)
    c0, c1 = np.clip(np.arange(w) - cols, 0, w), np.clip(np.arange(w) + cols + 1, 0, w)
    total = (
        table[:, r1][:, :, c1]
        - table[:, r0][:, :, c1]
        - table[:, r1][:, :, c0]
        + table[:, r0][:, :, c0]
    )
    found: Array = total > 0
    return found


def missing_paint_px(rasters: Array) -> Array:
    """Per window (N,): map-line pixels (solid or dashed) that the drives covered (coverage at
    least 0.5) but where no drive saw any paint within +-6 m along and +-0.75 m across.

    A deleted marking is an *absence*, the faintest change for the CNN; this classical cue counts
    it directly from the same rasters (a whole deleted line in a window is about 128 pixels;
    unchanged windows rarely reach 45 on the default preset).
    """
    channel = {name: i for i, name in enumerate(CHANNELS)}
    map_line = (rasters[:, channel["map_solid"]] + rasters[:, channel["map_dashed"]]) > 0
    covered = rasters[:, channel["drive_coverage"]] >= 0.5
    paint = (rasters[:, channel["drive_solid"]] + rasters[:, channel["drive_dashed"]]) > 0
    seen = _any_nearby(paint, MISSING_PAINT_ROWS, MISSING_PAINT_COLS)
    counts: Array = (map_line & covered & ~seen).sum(axis=(1, 2)).astype(np.float32)
    return counts


def _flagged_windows(outputs: WindowOutputs, rule: AggregationRule) -> Array:
    flagged = np.flatnonzero(outputs.changed_logit > rule.window_threshold_logit)
    return flagged if flagged.size else np.array([int(np.argmax(outputs.changed_logit))])


def _change_types(outputs: WindowOutputs, flagged: Array, rule: AggregationRule) -> tuple[str, ...]:
    weights = 1.0 / (1.0 + np.exp(-outputs.changed_logit[flagged].astype(np.float64)))
    probs = _softmax(outputs.type_logits[flagged].astype(np.float64))[:, 1:]
    mass = (weights[:, None] * probs).sum(axis=0)
    order = np.argsort(-mass, kind="stable")
    keep = [i for i in order if mass[i] >= rule.secondary_type_share * mass[order[0]]]
    return tuple(CHANGE_TYPES[i + 1] for i in keep)


def _spans(stations_m: Array, flagged: Array, length_m: float) -> tuple[tuple[float, float], ...]:
    half_m = float(np.median(np.diff(stations_m))) / 2 if stations_m.size > 1 else length_m / 2
    spans: list[list[float]] = []
    for station in (float(s) for s in stations_m[flagged]):
        start, end = max(0.0, station - half_m), min(length_m, station + half_m)
        if spans and start <= spans[-1][1] + 1e-6:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return tuple((a, b) for a, b in spans)


def _paint_evidence(missing: Array | None, rule: AggregationRule) -> tuple[float, Array]:
    """Top-k mean of the windows' missing paint, and the windows at or above the threshold."""
    if missing is None or missing.size == 0:
        return 0.0, np.zeros(0, np.int64)
    flagged = np.flatnonzero(missing >= rule.missing_paint_px)
    return segment_score(missing, rule.top_k), flagged


def aggregate_windows(
    segment_id: str,
    stations_m: Array,
    length_m: float,
    outputs: WindowOutputs,
    *,
    rule: AggregationRule = DEFAULT_RULE,
    model_calls: int = 0,
    missing_paint: Array | None = None,
) -> SegmentDecision:
    """Window outputs of one segment -> its decision (pure numpy, the rule is the docstring's).

    `missing_paint` (N,) is `missing_paint_px` of the windows: a segment whose top-k mean reaches
    `rule.missing_paint_px` is changed (`marking_deleted`) even when the CNN says no.
    """
    score = segment_score(outputs.changed_logit, rule.top_k)
    margin = score - rule.threshold_logit
    paint_score, paint_windows = _paint_evidence(missing_paint, rule)
    paint_margin = (paint_score - rule.missing_paint_px) / rule.missing_paint_px_per_logit
    by_model, by_paint = margin > 0, paint_margin >= 0
    changed = by_model or by_paint
    flagged = (
        _flagged_windows(outputs, rule) if by_model or not paint_windows.size else paint_windows
    )
    remap_logit = float(outputs.remap_logit[flagged].mean())
    if by_model:
        types = _change_types(outputs, flagged, rule)
    else:
        types = (MISSING_PAINT_TYPE,) if by_paint else ()
    best = max(margin, paint_margin)
    return SegmentDecision(
        segment_id=segment_id,
        changed=changed,
        remap=by_model and remap_logit > rule.remap_threshold_logit,
        change_types=types,
        change_stations_m=tuple(float(s) for s in stations_m[flagged]) if changed else (),
        change_spans_m=_spans(stations_m, flagged, length_m) if changed else (),
        confidence=_sigmoid(best) if changed else 1.0 - _sigmoid(best),
        score_logit=score,
        missing_paint_px=paint_score,
        windows=int(stations_m.size),
        model_calls=model_calls,
    )


def _output(result: Mapping[str, Array], name: str, shape: tuple[int, ...]) -> Array:
    if name not in result:
        raise ModelOutputError(
            f"the model returned {sorted(result)}, expected an output named {name!r}: "
            "use a CDNet model (roadchange.pipeline.shipped_model_path())"
        )
    value = np.asarray(result[name], dtype=np.float32)
    if value.shape != shape:
        raise ModelOutputError(f"model output {name!r} has shape {value.shape}, expected {shape}")
    return value


def run_windows(
    model: ModelLike, rasters: Array, *, max_batch: int = DEFAULT_MAX_BATCH
) -> tuple[WindowOutputs, int]:
    """Run the model on `(N, C, H, W)` windows in batches of at most `max_batch`; return the
    validated outputs and the number of model calls."""
    parts: dict[str, list[Array]] = {CHANGED_OUTPUT: [], REMAP_OUTPUT: [], TYPE_OUTPUT: []}
    calls = 0
    for start in range(0, rasters.shape[0], max_batch):
        batch = np.ascontiguousarray(rasters[start : start + max_batch], dtype=np.float32)
        result = model.infer({INPUT_NAME: batch})
        calls += 1
        n = batch.shape[0]
        parts[CHANGED_OUTPUT].append(_output(result, CHANGED_OUTPUT, (n,)))
        parts[REMAP_OUTPUT].append(_output(result, REMAP_OUTPUT, (n,)))
        parts[TYPE_OUTPUT].append(_output(result, TYPE_OUTPUT, (n, len(CHANGE_TYPES))))
    outputs = WindowOutputs(
        *(np.concatenate(parts[k]) for k in (CHANGED_OUTPUT, REMAP_OUTPUT, TYPE_OUTPUT))
    )
    return outputs, calls


def load_segment(source: Path | str | Segment) -> Segment:
    """A `Segment` as is, or read from its file (`SegmentFileError` names a bad file)."""
    return source if isinstance(source, Segment) else read_segment(Path(source))


@dataclass(frozen=True, slots=True)
class PreparedSegment:
    """The CPU stage's result: the segment, its window stations and rasters, ready for the model."""

    segment: Segment
    stations_m: Array
    rasters: Array
    missing_paint_px: Array


def prepare_segment(
    source: Path | str | Segment, *, allocate: Allocate | None = None
) -> PreparedSegment:
    """CPU stage: load the segment and rasterize its overlapping road-aligned windows (into
    `allocate(shape, dtype)` when given: see `rasterize_windows`)."""
    segment = load_segment(source)
    stations = window_stations(segment.length_m)
    rasters = rasterize_windows(segment, stations, allocate=allocate)
    return PreparedSegment(segment, stations, rasters, missing_paint_px(rasters))


def decide(
    prepared: PreparedSegment,
    model: ModelLike,
    *,
    rule: AggregationRule = DEFAULT_RULE,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> SegmentDecision:
    """Model stage: run the windows in batches and aggregate them into the segment's decision."""
    outputs, calls = run_windows(model, prepared.rasters, max_batch=max_batch)
    segment = prepared.segment
    return aggregate_windows(
        segment.segment_id,
        prepared.stations_m,
        segment.length_m,
        outputs,
        rule=rule,
        model_calls=calls,
        missing_paint=prepared.missing_paint_px,
    )


def check_segment(
    source: Path | str | Segment,
    model: ModelLike,
    *,
    rule: AggregationRule = DEFAULT_RULE,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> SegmentDecision:
    """Decide whether one segment's map is still right, from its drives (see the module doc).
    With a fleetinfer model handle, the windows are drawn straight into its `empty()` arrays,
    so that in `shared` mode the model server reads them where they lie."""
    prepared = prepare_segment(source, allocate=getattr(model, "empty", None))
    return decide(prepared, model, rule=rule, max_batch=max_batch)
