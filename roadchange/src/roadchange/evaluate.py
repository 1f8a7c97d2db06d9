"""Evaluation of the segment pipeline against the segments' labels (numpy + onnxruntime only).

Metrics, over the segments that could be read (a bad file is counted in `failed`, named in
`failures`, and the evaluation goes on):

- `accuracy`, `precision`, `recall`, `f1` of the binary decision "the map changed";
- `macc`: the mean of the recall of the changed and of the unchanged class (TbV's metric);
- `remap_f1`: F1 of "the change is structural, re-map" (a segment predicted unchanged predicts no
  remap);
- `per_type_recall`: for each true change type, the share of its segments the pipeline detected as
  changed ("none": the share predicted unchanged);
- `type_accuracy`: among detected changed segments, the share whose first predicted type is right.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roadchange.errors import RoadchangeError
from roadchange.pipeline import (
    DEFAULT_RULE,
    AggregationRule,
    ModelLike,
    PreparedSegment,
    SegmentDecision,
    decide,
    prepare_segment,
)
from roadchange.segfile import SUFFIX as SEGMENT_SUFFIX
from roadchange.world import CHANGE_TYPES, Label

PREFETCH = 2
"""Segments prepared ahead of the model (one being rasterized, one waiting)."""


class EvaluationInputError(RoadchangeError):
    """The evaluation data folder is missing or holds no segment files."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """One evaluated segment: its label beside the pipeline's decision."""

    label: Label
    decision: SegmentDecision


@dataclass(frozen=True, slots=True)
class SegmentFailure:
    path: str
    error: str


@dataclass(frozen=True, slots=True)
class EvalReport:
    """The metrics of one evaluation (see the module docstring); `to_json()` is JSON-safe."""

    segments: int
    failed: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    macc: float
    remap_f1: float
    type_accuracy: float
    per_type_recall: dict[str, float]
    confusion: dict[str, int]
    windows: int
    model_calls: int
    seconds: float
    failures: tuple[SegmentFailure, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__slots__ if k != "failures"}
        data["failures"] = [{"path": f.path, "error": f.error} for f in self.failures]
        return data


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def _f1(tp: int, fp: int, fn: int) -> float:
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _confusion(pairs: Sequence[tuple[bool, bool]]) -> dict[str, int]:
    return {
        "tp": sum(t and p for t, p in pairs),
        "fp": sum(p and not t for t, p in pairs),
        "tn": sum(not t and not p for t, p in pairs),
        "fn": sum(t and not p for t, p in pairs),
    }


def _per_type_recall(outcomes: Sequence[Outcome]) -> dict[str, float]:
    recall: dict[str, float] = {}
    for change_type in CHANGE_TYPES:
        group = [o for o in outcomes if o.label.change_type == change_type]
        if group:
            hits = sum(o.decision.changed != (change_type == "none") for o in group)
            recall[change_type] = round(hits / len(group), 6)
    return recall


def _type_accuracy(outcomes: Sequence[Outcome]) -> float:
    detected = [o for o in outcomes if o.label.changed and o.decision.changed]
    right = sum(o.decision.change_types[:1] == (o.label.change_type,) for o in detected)
    return _ratio(right, len(detected))


def compute_report(
    outcomes: Sequence[Outcome], failures: Sequence[SegmentFailure], seconds: float
) -> EvalReport:
    """The metrics of the module docstring for these outcomes."""
    c = _confusion([(o.label.changed, o.decision.changed) for o in outcomes])
    r = _confusion([(o.label.remap, o.decision.remap) for o in outcomes])
    recall, specificity = _ratio(c["tp"], c["tp"] + c["fn"]), _ratio(c["tn"], c["tn"] + c["fp"])
    return EvalReport(
        segments=len(outcomes),
        failed=len(failures),
        accuracy=_ratio(c["tp"] + c["tn"], len(outcomes)),
        precision=_ratio(c["tp"], c["tp"] + c["fp"]),
        recall=recall,
        f1=_f1(c["tp"], c["fp"], c["fn"]),
        macc=(recall + specificity) / 2,
        remap_f1=_f1(r["tp"], r["fp"], r["fn"]),
        type_accuracy=_type_accuracy(outcomes),
        per_type_recall=_per_type_recall(outcomes),
        confusion=c,
        windows=sum(o.decision.windows for o in outcomes),
        model_calls=sum(o.decision.model_calls for o in outcomes),
        seconds=round(seconds, 3),
        failures=tuple(failures),
    )


def segment_files(data_dir: Path) -> list[Path]:
    """The segment files of a dataset folder, sorted by name."""
    if not data_dir.is_dir():
        raise EvaluationInputError(
            f"{data_dir} is not a folder: pass the --out folder of `roadchange generate`"
        )
    files = sorted(p for p in data_dir.iterdir() if p.is_file() and p.suffix == SEGMENT_SUFFIX)
    if not files:
        raise EvaluationInputError(
            f"{data_dir} holds no *{SEGMENT_SUFFIX} segment files: generate some with "
            "`roadchange generate --preset default --segments 100 --seed 424242 --out DIR`"
        )
    return files


def _prepare(path: Path) -> PreparedSegment | SegmentFailure:
    try:
        return prepare_segment(path)
    except RoadchangeError as exc:
        return SegmentFailure(str(path), str(exc))


def evaluate_files(
    files: Sequence[Path],
    model: ModelLike,
    *,
    rule: AggregationRule = DEFAULT_RULE,
    on_progress: Callable[[int], None] | None = None,
) -> EvalReport:
    """Run the pipeline on every file; a file that fails with a `RoadchangeError` is recorded.

    The CPU stage of the next segment (read, rasterize) runs in a helper thread while the model
    runs on the current one, as a worker and a model server would overlap them.
    """
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    failures: list[SegmentFailure] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(_prepare, path) for path in files[:PREFETCH]]
        for done in range(1, len(files) + 1):
            prepared = pending.pop(0).result()
            if done + PREFETCH - 1 < len(files):
                pending.append(pool.submit(_prepare, files[done + PREFETCH - 1]))
            if isinstance(prepared, SegmentFailure):
                failures.append(prepared)
            else:
                decision = decide(prepared, model, rule=rule)
                outcomes.append(Outcome(prepared.segment.label, decision))
            if on_progress is not None:
                on_progress(done)
    return compute_report(outcomes, failures, time.perf_counter() - started)


def evaluate_directory(
    data_dir: Path,
    model: ModelLike,
    *,
    rule: AggregationRule = DEFAULT_RULE,
    on_progress: Callable[[int], None] | None = None,
) -> EvalReport:
    """Evaluate every segment file of `data_dir` (see `evaluate_files`)."""
    return evaluate_files(segment_files(data_dir), model, rule=rule, on_progress=on_progress)
