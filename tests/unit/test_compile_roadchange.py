"""The roadchange adapter: calibration windows and segment-pipeline metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from roadchange.compile_plugin import RoadchangeCalibration, RoadchangeEvaluator

Array = np.ndarray[Any, Any]


class ConstantModel:
    """Says the same thing about every window."""

    def __init__(self, changed_logit: float) -> None:
        self.changed_logit = changed_logit

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        n = inputs["raster"].shape[0]
        return {
            "changed_logit": np.full(n, self.changed_logit, np.float32),
            "remap_logit": np.zeros(n, np.float32),
            "type_logits": np.zeros((n, 7), np.float32),
        }


def test_calibration_yields_single_raster_windows_of_cdnet_shape() -> None:
    batches = list(RoadchangeCalibration(segments=1, stride=4))
    assert batches
    assert all(set(b) == {"raster"} for b in batches)
    assert {b["raster"].shape for b in batches} == {(1, 9, 128, 128)}
    assert all(b["raster"].dtype == np.float32 for b in batches)


def test_a_model_that_always_says_unchanged_scores_macc_one_half() -> None:
    evaluator = RoadchangeEvaluator(segments=6, seed=424242)
    metrics = evaluator.evaluate(ConstantModel(-5.0))
    assert evaluator.metric == "macc"
    assert metrics["macc"] == 0.5
    assert metrics["f1"] == 0.0
