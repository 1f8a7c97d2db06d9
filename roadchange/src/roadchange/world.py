"""The synthetic road world: segments with a current map, a true road and the drives over it.

A segment is 300–500 m of road. Its centreline is clothoid-like: the curvature varies piecewise
linearly with arc length ("station"). The road has 1–4 lanes of one width in 3.0–3.8 m, solid
outer and dashed inner markings (dashes cut by arc length, 3 m dash / 9 m gap) and road edges
beyond a shoulder.

The *current map* is the road as the map knows it; the *true road* is the road as it is today.
With `change_probability` they differ by one local change over a stretch of the segment (the
span, in stations along the map's centreline, 40–150 m, ramps included):

| change                 | true road inside the span                                   | remap |
|------------------------|-------------------------------------------------------------|-------|
| `lane_added`           | a new lane on the right (the old solid line turns dashed)   | yes   |
| `lane_removed`         | the rightmost lane merges away (its dashed line ends)       | yes   |
| `lane_shift`           | every line moves sideways by 0.5–2 m (preset's range)      | yes   |
| `marking_type_changed` | one lane line flips solid <-> dashed                        | no    |
| `marking_deleted`      | one lane line has no paint                                  | no    |
| `new_road`             | the whole road is new: the current map is empty             | yes   |

Lateral moves (added/removed lanes, shifts) ramp in and out over `taper_m` at both ends of the
span. Everything is deterministic from `(seed, index)`: `np.random.default_rng([seed, index])`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from roadchange.drives import (
    CLASS_CENTRELINE,
    CLASS_DASHED,
    CLASS_EDGE,
    CLASS_SOLID,
    KIND_ABSENT,
    LINE_CLASSES,
    BoolArray,
    Drive,
    Float32Array,
    FloatArray,
    Int8Array,
    MarkedRoad,
    Polylines,
    SensorModel,
    class_runs,
    decimate_runs,
    left_normals,
    simulate_drives,
)
from roadchange.errors import InvalidParameterError

__all__ = [
    "CHANGE_TYPES",
    "LINE_CLASSES",
    "PRESETS",
    "STRUCTURAL_CHANGES",
    "Label",
    "Preset",
    "RoadMap",
    "Segment",
    "generate_segment",
    "get_preset",
]

CHANGE_TYPES: tuple[str, ...] = (
    "none",
    "lane_added",
    "lane_removed",
    "lane_shift",
    "marking_type_changed",
    "marking_deleted",
    "new_road",
)
STRUCTURAL_CHANGES: frozenset[str] = frozenset(
    {"lane_added", "lane_removed", "lane_shift", "new_road"}
)
STATION_STEP_M = 0.5
"""Sampling of the road description along the centreline."""
MAP_VERTEX_SPACING_M = 1.0


@dataclass(frozen=True)
class Preset:
    """A world configuration: road geometry, change sizes and the drives' sensor model."""

    name: str
    sensors: SensorModel
    length_m: tuple[float, float] = (300.0, 500.0)
    lanes: tuple[int, int] = (1, 4)
    lane_width_m: tuple[float, float] = (3.0, 3.8)
    shoulder_m: tuple[float, float] = (0.3, 1.5)
    max_curvature_per_m: float = 1.0 / 200.0
    curvature_knot_spacing_m: tuple[float, float] = (60.0, 160.0)
    dash_length_m: float = 3.0
    dash_gap_m: float = 9.0
    change_span_m: tuple[float, float] = (40.0, 150.0)
    shift_m: tuple[float, float] = (0.5, 2.0)
    taper_m: float = 10.0

    def __post_init__(self) -> None:
        _check_range("length_m", self.length_m, 100.0)
        _check_range("lanes", self.lanes, 1)
        if self.lanes[0] > 3 or self.lanes[1] < 2:
            raise InvalidParameterError(
                "lanes",
                self.lanes,
                "a range that allows adding a lane (min <= 3) and removing one (max >= 2)",
            )
        _check_range("lane_width_m", self.lane_width_m, 1.0)
        _check_range("shoulder_m", self.shoulder_m, 0.0)
        _check_range("curvature_knot_spacing_m", self.curvature_knot_spacing_m, 1.0)
        _check_range("change_span_m", self.change_span_m, 1.0)
        _check_range("shift_m", self.shift_m, 0.0)
        for name in ("max_curvature_per_m", "dash_length_m", "dash_gap_m", "taper_m"):
            if not getattr(self, name) > 0:
                raise InvalidParameterError(name, getattr(self, name), "a positive number")


def _check_range(name: str, pair: tuple[float, float], minimum: float) -> None:
    if not minimum <= pair[0] <= pair[1]:
        raise InvalidParameterError(name, pair, f"(low, high) with {minimum} <= low <= high")


DEFAULT = Preset(
    name="default",
    sensors=SensorModel(
        drives_min=3,
        drives_max=10,
        gps_sigma_m=0.2,
        yaw_sigma_deg=0.3,
        point_noise_m=0.05,
        trajectory_noise_m=0.03,
        lateral_wander_m=0.2,
        dropout_probability=0.1,
        dropout_piece_m=8.0,
        occlusions_per_km=2.0,
        occlusion_length_m=(10.0, 40.0),
        confusion_probability=0.05,
        false_positives_per_km=10.0,
        false_positive_length_m=(2.0, 10.0),
        fov_half_width_m=9.0,
    ),
)
HARD = Preset(
    name="hard",
    sensors=SensorModel(
        drives_min=3,
        drives_max=5,
        gps_sigma_m=0.5,
        yaw_sigma_deg=0.8,
        point_noise_m=0.08,
        trajectory_noise_m=0.05,
        lateral_wander_m=0.3,
        dropout_probability=0.25,
        dropout_piece_m=8.0,
        occlusions_per_km=6.0,
        occlusion_length_m=(15.0, 60.0),
        confusion_probability=0.15,
        false_positives_per_km=25.0,
        false_positive_length_m=(2.0, 12.0),
        fov_half_width_m=6.5,
    ),
    shift_m=(0.5, 1.0),
)
PRESETS: dict[str, Preset] = {p.name: p for p in (DEFAULT, HARD)}


def get_preset(preset: str | Preset) -> Preset:
    """The preset named `preset` (`default` or `hard`), or `preset` itself."""
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise InvalidParameterError("preset", preset, f"one of {sorted(PRESETS)}") from None


@dataclass(frozen=True)
class Label:
    """Ground truth of a segment. `change_span_m` is (start, end) station, None without change."""

    changed: bool
    remap: bool
    change_type: str
    change_span_m: tuple[float, float] | None


@dataclass(frozen=True, eq=False)
class RoadMap:
    """A map of a road: its centreline (reference line, (K, 2) float32) and its polylines.

    `lines` holds solid, dashed, edge and lane-centreline polylines (`LINE_CLASSES`). Dashed lines
    are mapped as continuous polylines. An empty map (a road the map does not have) has a (0, 2)
    centreline and no lines.
    """

    centreline_m: Float32Array
    lines: Polylines

    @staticmethod
    def empty() -> RoadMap:
        return RoadMap(np.zeros((0, 2), np.float32), Polylines.empty())

    @property
    def is_empty(self) -> bool:
        return int(self.centreline_m.shape[0]) == 0

    def same_as(self, other: RoadMap) -> bool:
        return np.array_equal(self.centreline_m, other.centreline_m) and self.lines.same_as(
            other.lines
        )


@dataclass(frozen=True, eq=False)
class Segment:
    """One road segment: the current map, the drives over the true road, and the ground truth.

    `true_road` and `true_map` describe the road as it really is (for debugging, plots and
    tests); the pipeline must read neither them nor `label`.
    """

    segment_id: str
    preset: str
    seed: int
    index: int
    length_m: float
    current_map: RoadMap
    drives: tuple[Drive, ...]
    label: Label
    true_road: MarkedRoad
    true_map: RoadMap = field(repr=False)

    def same_as(self, other: Segment) -> bool:
        """Field-by-field equality, arrays compared exactly."""
        return (
            (self.segment_id, self.preset, self.seed, self.index, self.length_m, self.label)
            == (
                other.segment_id,
                other.preset,
                other.seed,
                other.index,
                other.length_m,
                other.label,
            )
            and self.current_map.same_as(other.current_map)
            and self.true_map.same_as(other.true_map)
            and self.true_road.same_as(other.true_road)
            and len(self.drives) == len(other.drives)
            and all(a.same_as(b) for a, b in zip(self.drives, other.drives, strict=True))
        )


@dataclass(frozen=True, eq=False)
class _Layout:
    """Lines of a road as lateral offsets along its reference line.

    Rows: 0 left edge, 1..n+1 lane lines left to right, n+2 a spare right lane line (used by an
    added lane), n+3 right edge. `exists` is the geometry (a lane line with its paint deleted
    still bounds lanes); `kinds` is the paint class or KIND_ABSENT.
    """

    lanes: int
    lane_width_m: float
    offsets_m: FloatArray
    kinds: Int8Array
    exists: BoolArray

    def copy(self) -> _Layout:
        return _Layout(
            self.lanes,
            self.lane_width_m,
            self.offsets_m.copy(),
            self.kinds.copy(),
            self.exists.copy(),
        )

    def lane_line_rows(self) -> range:
        return range(1, self.lanes + 3)


def generate_segment(
    *, seed: int, index: int, preset: str | Preset, change_probability: float = 0.5
) -> Segment:
    """Generate segment `index` of the world `seed`: identical arrays for identical arguments."""
    config = get_preset(preset)
    _check_arguments(seed, index, change_probability)
    rng = np.random.default_rng([seed, index])
    change = _draw_change_type(rng, change_probability)
    length_m = float(np.floor(rng.uniform(*config.length_m) / STATION_STEP_M) * STATION_STEP_M)
    stations = np.arange(0.0, length_m + STATION_STEP_M / 2, STATION_STEP_M)
    reference = _reference_line(stations, config, rng)
    layout = _base_layout(stations.shape[0], _lane_count(change, config, rng), config, rng)
    span = _draw_span(change, length_m, config, rng)
    true_layout = _apply_change(layout, change, stations, span, config, rng)
    true_road = _marked_road(stations, reference, true_layout, change, config, rng)
    current_map = RoadMap.empty() if change == "new_road" else _road_map(reference, layout)
    return Segment(
        segment_id=f"{config.name}-{seed}-{index:06d}",
        preset=config.name,
        seed=seed,
        index=index,
        length_m=length_m,
        current_map=current_map,
        drives=simulate_drives(true_road, config.sensors, rng),
        label=Label(change != "none", change in STRUCTURAL_CHANGES, change, span),
        true_road=true_road,
        true_map=_road_map(reference, true_layout),
    )


def _check_arguments(seed: int, index: int, change_probability: float) -> None:
    if seed < 0:
        raise InvalidParameterError("seed", seed, "an integer >= 0")
    if index < 0:
        raise InvalidParameterError("index", index, "an integer >= 0")
    if not 0.0 <= change_probability <= 1.0:
        raise InvalidParameterError("change_probability", change_probability, "a number in [0, 1]")


def _draw_change_type(rng: np.random.Generator, change_probability: float) -> str:
    changed = rng.random() < change_probability
    pick = int(rng.integers(1, len(CHANGE_TYPES)))
    return CHANGE_TYPES[pick] if changed else "none"


def _lane_count(change: str, config: Preset, rng: np.random.Generator) -> int:
    low, high = config.lanes
    if change == "lane_added":
        high = min(high, 3)
    elif change == "lane_removed":
        low = max(low, 2)
    return int(rng.integers(low, high + 1))


def _reference_line(stations: FloatArray, config: Preset, rng: np.random.Generator) -> FloatArray:
    """Clothoid-like centreline: curvature piecewise linear in station, integrated twice."""
    length_m = float(stations[-1])
    knots = [0.0]
    while knots[-1] < length_m:
        knots.append(knots[-1] + rng.uniform(*config.curvature_knot_spacing_m))
    kappa_knots = rng.uniform(-config.max_curvature_per_m, config.max_curvature_per_m, len(knots))
    kappa_knots[rng.random(len(knots)) < 0.3] = 0.0
    kappa = np.interp(stations, knots, kappa_knots)
    step = stations[1] - stations[0]
    heading = rng.uniform(0, 2 * np.pi) + np.concatenate(
        [[0.0], np.cumsum((kappa[1:] + kappa[:-1]) / 2 * step)]
    )
    mid = (heading[1:] + heading[:-1]) / 2
    deltas = np.stack([np.cos(mid), np.sin(mid)], axis=1) * step
    reference: FloatArray = np.concatenate([np.zeros((1, 2)), np.cumsum(deltas, axis=0)])
    return reference


def _base_layout(n_stations: int, lanes: int, config: Preset, rng: np.random.Generator) -> _Layout:
    width = rng.uniform(*config.lane_width_m)
    half = lanes * width / 2
    lane_lines = half - width * np.arange(lanes + 1)
    row_offsets = np.concatenate(
        [
            [half + rng.uniform(*config.shoulder_m)],
            lane_lines,
            [lane_lines[-1]],
            [-half - rng.uniform(*config.shoulder_m)],
        ]
    )
    row_kinds = np.array(
        [CLASS_EDGE, CLASS_SOLID]
        + [CLASS_DASHED] * (lanes - 1)
        + [CLASS_SOLID, KIND_ABSENT, CLASS_EDGE],
        np.int8,
    )
    exists = np.ones((row_offsets.shape[0], n_stations), bool)
    exists[lanes + 2] = False
    return _Layout(
        lanes=lanes,
        lane_width_m=float(width),
        offsets_m=np.repeat(row_offsets[:, None], n_stations, axis=1),
        kinds=np.repeat(row_kinds[:, None], n_stations, axis=1),
        exists=exists,
    )


def _draw_span(
    change: str, length_m: float, config: Preset, rng: np.random.Generator
) -> tuple[float, float] | None:
    if change == "none":
        return None
    if change == "new_road":
        return (0.0, length_m)
    margin_m = 10.0
    span_m = min(rng.uniform(*config.change_span_m), length_m - 2 * margin_m)
    start = rng.uniform(margin_m, length_m - margin_m - span_m)
    return (float(start), float(start + span_m))


def _ramp(stations: FloatArray, span: tuple[float, float], taper_m: float) -> FloatArray:
    """0 outside the span, 1 inside, linear ramps of `taper_m` (at most a quarter span) at ends."""
    start, end = span
    taper = min(taper_m, (end - start) / 4)
    up = np.clip((stations - start) / taper, 0.0, 1.0)
    down = np.clip((end - stations) / taper, 0.0, 1.0)
    ramp: FloatArray = np.minimum(up, down)
    return ramp


def _apply_change(
    layout: _Layout,
    change: str,
    stations: FloatArray,
    span: tuple[float, float] | None,
    config: Preset,
    rng: np.random.Generator,
) -> _Layout:
    """The true road: `layout` with `change` applied over `span`."""
    true = layout.copy()
    if span is None or change not in _CHANGES:
        return true
    _CHANGES[change](true, _ramp(stations, span, config.taper_m), config, rng)
    return true


def _add_lane(true: _Layout, ramp: FloatArray, config: Preset, rng: np.random.Generator) -> None:
    """A new lane opens on the right; the old solid right line turns dashed."""
    last, spare, right_edge = true.lanes + 1, true.lanes + 2, true.lanes + 3
    inside = ramp > 0
    true.offsets_m[spare] = true.offsets_m[last] - true.lane_width_m * ramp
    true.offsets_m[right_edge] -= true.lane_width_m * ramp
    true.exists[spare] = inside
    true.kinds[spare] = np.where(inside, CLASS_SOLID, KIND_ABSENT)
    true.kinds[last] = np.where(inside, CLASS_DASHED, CLASS_SOLID)


def _remove_lane(true: _Layout, ramp: FloatArray, config: Preset, rng: np.random.Generator) -> None:
    """The rightmost lane narrows to nothing; its dashed left line ends where it is gone."""
    last, right_edge = true.lanes + 1, true.lanes + 3
    merged = ramp >= 1.0
    true.offsets_m[last] += true.lane_width_m * ramp
    true.offsets_m[right_edge] += true.lane_width_m * ramp
    true.exists[last - 1] = ~merged
    true.kinds[last - 1] = np.where(merged, KIND_ABSENT, CLASS_DASHED)


def _shift_lanes(true: _Layout, ramp: FloatArray, config: Preset, rng: np.random.Generator) -> None:
    """Every line moves sideways by the same amount, left or right."""
    sign = rng.choice([-1.0, 1.0])
    true.offsets_m[:] += sign * rng.uniform(*config.shift_m) * ramp[None, :]


def _flip_marking(
    true: _Layout, ramp: FloatArray, config: Preset, rng: np.random.Generator
) -> None:
    """One lane line turns from solid to dashed or back."""
    row = int(rng.integers(1, true.lanes + 2))
    flipped = CLASS_SOLID + CLASS_DASHED - true.kinds[row]
    true.kinds[row] = np.where(ramp > 0, flipped, true.kinds[row])


def _delete_marking(
    true: _Layout, ramp: FloatArray, config: Preset, rng: np.random.Generator
) -> None:
    """One lane line loses its paint (the lanes stay)."""
    row = int(rng.integers(1, true.lanes + 2))
    true.kinds[row] = np.where(ramp > 0, KIND_ABSENT, true.kinds[row])


_CHANGES: dict[str, Callable[[_Layout, FloatArray, Preset, np.random.Generator], None]] = {
    "lane_added": _add_lane,
    "lane_removed": _remove_lane,
    "lane_shift": _shift_lanes,
    "marking_type_changed": _flip_marking,
    "marking_deleted": _delete_marking,
}
"""How each local change turns the map's layout into the true one (new_road: nothing to do)."""


def _marked_road(
    stations: FloatArray,
    reference: FloatArray,
    layout: _Layout,
    change: str,
    config: Preset,
    rng: np.random.Generator,
) -> MarkedRoad:
    period = config.dash_length_m + config.dash_gap_m
    phases = np.asarray(rng.uniform(0.0, period, size=layout.offsets_m.shape[0]), np.float64)
    in_dash = np.mod(stations[None, :] + phases[:, None], period) < config.dash_length_m
    painted = (layout.kinds >= 0) & ((layout.kinds != CLASS_DASHED) | in_dash)
    drivable = layout.lanes - 1 if change == "lane_removed" else layout.lanes
    lines = layout.offsets_m[1 : drivable + 2]
    return MarkedRoad(
        stations_m=stations,
        reference_m=reference,
        offsets_m=layout.offsets_m,
        kinds=layout.kinds,
        painted=painted,
        lane_centres_m=(lines[:-1] + lines[1:]) / 2,
        lane_counts=(layout.exists[layout.lane_line_rows()].sum(axis=0) - 1).astype(np.int8),
    )


def _road_map(reference: FloatArray, layout: _Layout) -> RoadMap:
    normals = left_normals(reference)
    step = max(1, round(MAP_VERTEX_SPACING_M / STATION_STEP_M))
    painted_lines = _polylines(
        reference, normals, layout.offsets_m, layout.kinds, layout.kinds >= 0, step
    )
    centre_offsets, centre_valid = _lane_centres(layout)
    centre_kinds = np.where(centre_valid, CLASS_CENTRELINE, KIND_ABSENT).astype(np.int8)
    centrelines = _polylines(reference, normals, centre_offsets, centre_kinds, centre_valid, step)
    keep = np.zeros(reference.shape[0], bool)
    keep[::step] = True
    keep[-1] = True
    return RoadMap(
        centreline_m=reference[keep].astype(np.float32),
        lines=Polylines.concatenate([painted_lines, centrelines]),
    )


def _polylines(
    reference: FloatArray,
    normals: FloatArray,
    offsets_m: FloatArray,
    kinds: Int8Array,
    present: BoolArray,
    step: int,
) -> Polylines:
    pieces = np.zeros(reference.shape[0], np.int64)
    line_idx, station_idx, indptr = class_runs(present, kinds, pieces)
    keep = decimate_runs(indptr, station_idx.shape[0], step)
    line_idx, station_idx = line_idx[keep], station_idx[keep]
    new_indptr = np.searchsorted(np.flatnonzero(keep), indptr).astype(np.int64)
    xy = reference[station_idx] + offsets_m[line_idx, station_idx][:, None] * normals[station_idx]
    classes = kinds[line_idx[new_indptr[:-1]], station_idx[new_indptr[:-1]]].astype(np.int8)
    return Polylines(xy.astype(np.float32), new_indptr, classes)


def _lane_centres(layout: _Layout) -> tuple[FloatArray, BoolArray]:
    """Midlines between each existing lane line and the next existing one to its right."""
    rows = list(layout.lane_line_rows())
    offsets = layout.offsets_m[rows]
    exists = layout.exists[rows]
    n_stations = offsets.shape[1]
    next_offset = np.full(n_stations, np.nan)
    centres = np.full_like(offsets, np.nan)
    for i in range(len(rows) - 1, -1, -1):
        centres[i] = (offsets[i] + next_offset) / 2
        next_offset = np.where(exists[i], offsets[i], next_offset)
    valid = exists & ~np.isnan(centres)
    return np.nan_to_num(centres), valid
