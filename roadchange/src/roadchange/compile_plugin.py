"""roadchange's compile task plugin: CDNet calibration windows and the segment-pipeline evaluation.

Registered as `roadchange` in the entry-point group `fleetinfer.compile.tasks` (see
roadchange/pyproject.toml), so `fleetinfer compile --calibration roadchange --evaluation
roadchange` finds it without fleetinfer importing roadchange.

- `RoadchangeCalibration`: rasterized windows of generated segments (validation seed 900 by
  default: never an evaluation seed), one window per input dict, batch 1.
- `RoadchangeEvaluator`: `roadchange.pipeline.check_segment` on every segment of a generated split
  (evaluation seed 424242, preset `default`, by default), scored by `roadchange.evaluate`: `macc`
  (the gate's metric), `f1`, `accuracy`, `remap_f1`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleetinfer.compile.accuracy import InferenceModel

Array = np.ndarray[Any, Any]
CALIBRATION_SEED = 900
EVALUATION_SEED = 424242


@dataclass(frozen=True, slots=True)
class RoadchangeCalibration:
    """Windows of `segments` generated segments, every `stride`-th window, batch 1."""

    segments: int = 8
    seed: int = CALIBRATION_SEED
    preset: str = "default"
    stride: int = 2

    def __iter__(self) -> Iterator[Mapping[str, Array]]:
        from roadchange.pipeline import INPUT_NAME
        from roadchange.raster import rasterize_windows, window_stations
        from roadchange.world import generate_segment

        for index in range(self.segments):
            segment = generate_segment(seed=self.seed, index=index, preset=self.preset)
            windows = rasterize_windows(segment, window_stations(segment.length_m))
            for window in windows[:: self.stride]:
                yield {INPUT_NAME: np.ascontiguousarray(window[None], dtype=np.float32)}

    @property
    def description(self) -> str:
        return (
            f"roadchange windows: {self.segments} segments of seed {self.seed} "
            f"({self.preset}), every {self.stride}th window"
        )


class RoadchangeEvaluator:
    """Segment-pipeline metrics on a generated split; the gate watches `macc`."""

    metric = "macc"

    def __init__(
        self, *, segments: int = 200, seed: int = EVALUATION_SEED, preset: str = "default"
    ) -> None:
        self.segments, self.seed, self.preset = segments, seed, preset
        self._split: list[Any] | None = None

    @property
    def description(self) -> str:
        return (
            f"roadchange segment pipeline on {self.segments} segments of seed {self.seed} "
            f"({self.preset}): macc, f1, accuracy, remap_f1"
        )

    def _segments(self) -> list[Any]:
        if self._split is None:
            from roadchange.world import generate_segment

            self._split = [
                generate_segment(seed=self.seed, index=i, preset=self.preset)
                for i in range(self.segments)
            ]
        return self._split

    def evaluate(self, model: InferenceModel) -> dict[str, float]:
        from roadchange.evaluate import Outcome, compute_report
        from roadchange.pipeline import check_segment

        outcomes = [Outcome(s.label, check_segment(s, model)) for s in self._segments()]
        report = compute_report(outcomes, [], 0.0)
        return {
            "macc": report.macc,
            "f1": report.f1,
            "accuracy": report.accuracy,
            "remap_f1": report.remap_f1,
        }


class RoadchangePlugin:
    """What `fleetinfer.compile.plugins.load_plugin("roadchange")` returns."""

    def calibration(self, *, segments: int) -> RoadchangeCalibration:
        return RoadchangeCalibration(segments=segments)

    def evaluator(self, *, segments: int, seed: int) -> RoadchangeEvaluator:
        return RoadchangeEvaluator(segments=segments, seed=seed)


PLUGIN = RoadchangePlugin()
