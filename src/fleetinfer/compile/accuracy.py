"""Accuracy of a compiled model against its FP32 source, and the gate that guards publishing.

An `Evaluator` runs a task evaluation on a model (`infer(inputs) -> outputs`) and returns named
metrics; its `metric` is the one the gate watches. Both models are wrapped in a `RecordingModel`, so
whatever the evaluator feeds them, their outputs are compared call by call: the maximum absolute
difference per output, and `agreement`, the share of samples whose decision is the same (argmax of
the last axis, or the sign for a single logit). `InputsEvaluator` is the task-free evaluator: it
only feeds inputs, and its gate metric is that agreement (1.0 for the source by definition).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fleetinfer.compile.calibration import Tensors
from fleetinfer.errors import ConfigError

Array = np.ndarray[Any, Any]
AGREEMENT = "agreement"


class InferenceModel(Protocol):
    def infer(self, inputs: Mapping[str, Array]) -> Mapping[str, Array]: ...


class Evaluator(Protocol):
    """A task evaluation: `evaluate(model)` returns metrics, `metric` names the gated one."""

    @property
    def metric(self) -> str: ...

    @property
    def description(self) -> str: ...

    def evaluate(self, model: InferenceModel) -> dict[str, float]: ...


class RecordingModel:
    """Passes calls through and keeps every output, in order."""

    def __init__(self, model: InferenceModel) -> None:
        self.model = model
        self.outputs: list[dict[str, Array]] = []

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        result = {k: np.asarray(v) for k, v in self.model.infer(inputs).items()}
        self.outputs.append(result)
        return result


class InputsEvaluator:
    """Feeds fixed inputs and reports no task metric: the gate watches `agreement`."""

    metric = AGREEMENT

    def __init__(self, inputs: Sequence[Tensors], *, description: str) -> None:
        self.inputs = list(inputs)
        self.description = description

    def evaluate(self, model: InferenceModel) -> dict[str, float]:
        for batch in self.inputs:
            model.infer(batch)
        return {}


@dataclass(frozen=True, slots=True)
class Comparison:
    source: dict[str, float]
    compiled: dict[str, float]
    max_abs_diff: dict[str, float]


def _decisions(array: Array) -> Array:
    values = array.astype(np.float64)
    decided: Array = (
        np.argmax(values, axis=-1) if values.ndim >= 2 and values.shape[-1] > 1 else values > 0
    )
    return decided.reshape(values.shape[0], -1)


def compare_outputs(
    source: Sequence[Mapping[str, Array]], compiled: Sequence[Mapping[str, Array]]
) -> tuple[dict[str, float], float]:
    """Max absolute difference per output and the share of samples with equal decisions."""
    if len(source) != len(compiled):
        raise ValueError(
            f"the evaluator called the models a different number of times: {len(source)} vs {len(compiled)}"
        )
    diffs: dict[str, float] = {}
    same, total = 0, 0
    for a, b in zip(source, compiled, strict=True):
        for name in a:
            x, y = a[name].astype(np.float64), np.asarray(b[name]).astype(np.float64)
            diffs[name] = max(diffs.get(name, 0.0), float(np.max(np.abs(x - y), initial=0.0)))
        rows = np.concatenate([_decisions(a[n]) == _decisions(np.asarray(b[n])) for n in a], axis=1)
        same += int(rows.all(axis=1).sum())
        total += rows.shape[0]
    return diffs, (same / total if total else 1.0)


def compare_models(
    source: InferenceModel, compiled: InferenceModel, evaluator: Evaluator
) -> Comparison:
    """Evaluate both models with the same evaluator and compare their outputs."""
    recorded_source, recorded_compiled = RecordingModel(source), RecordingModel(compiled)
    metrics_source = evaluator.evaluate(recorded_source)
    metrics_compiled = evaluator.evaluate(recorded_compiled)
    diffs, agreement = compare_outputs(recorded_source.outputs, recorded_compiled.outputs)
    return Comparison(
        source={**metrics_source, AGREEMENT: 1.0},
        compiled={**metrics_compiled, AGREEMENT: agreement},
        max_abs_diff=diffs,
    )


@dataclass(frozen=True, slots=True)
class GateVerdict:
    metric: str
    source: float
    compiled: float
    drop: float
    threshold: float
    passed: bool


def gate(comparison: Comparison, metric: str, threshold: float) -> GateVerdict:
    """Passed when the metric drops by at most `threshold` (a gain always passes)."""
    if metric not in comparison.source or metric not in comparison.compiled:
        raise ConfigError(
            f"the evaluator's gate metric {metric!r} is not among the metrics it reported "
            f"({sorted(comparison.compiled)}): fix the evaluator's `metric` or its `evaluate`"
        )
    source, compiled = comparison.source[metric], comparison.compiled[metric]
    drop = source - compiled
    return GateVerdict(metric, source, compiled, drop, threshold, drop <= threshold + 1e-12)
