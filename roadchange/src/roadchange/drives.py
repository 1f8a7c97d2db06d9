"""Drives: what a survey vehicle's sensors report about the true road.

A drive follows one lane of the true road and reports (1) its trajectory from GPS and (2) the
lane markings and road edges its camera saw, as short polylines ("strokes") with a class. The
sensor model is a frozen `SensorModel` whose knobs carry their units; every imperfection is
modelled on purpose:

- a per-drive GPS offset N(0, `gps_sigma_m`) shared by the trajectory and every observation,
  and a per-drive yaw error N(0, `yaw_sigma_deg`) that rotates observations about the vehicle;
- per-vertex noise N(0, `point_noise_m`);
- dropout: the road is cut into pieces of `dropout_piece_m`, each (line, piece) is missed with
  `dropout_probability`;
- occlusion gaps (`occlusions_per_km`, each `occlusion_length_m` long) where nothing is seen;
  the trajectory's `seen` flag records them;
- solid/dashed confusion per stroke (`confusion_probability`);
- false-positive strokes (`false_positives_per_km`);
- a lateral field of view: only paint within `fov_half_width_m` of the vehicle is reported.

This module knows nothing of changes or maps: `roadchange.world` hands it a `MarkedRoad` (the true
road as paint along a reference line) and gets drives back. Randomness comes only from the
`numpy.random.Generator` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from roadchange.errors import InvalidParameterError

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
Int8Array = npt.NDArray[np.int8]
BoolArray = npt.NDArray[np.bool_]

LINE_CLASSES: tuple[str, ...] = ("solid", "dashed", "edge", "centreline")
"""Class ids of polylines: index into this tuple. Drives report only the first three."""
CLASS_SOLID, CLASS_DASHED, CLASS_EDGE, CLASS_CENTRELINE = 0, 1, 2, 3
KIND_ABSENT = -1
"""`MarkedRoad.kinds` value where a line has no paint / does not exist."""

STROKE_VERTEX_SPACING_M = 2.0
"""Spacing of reported stroke vertices along the road (a 3 m dash keeps both ends)."""
TRAJECTORY_SPACING_M = 1.0


@dataclass(frozen=True, eq=False)
class Polylines:
    """Many polylines in one array (CSR layout): polyline i is `points_m[indptr[i]:indptr[i+1]]`.

    `points_m` (P, 2) float32 metres in the segment frame, `indptr` (S+1,) int64, `classes` (S,)
    int8 indexing `LINE_CLASSES`.
    """

    points_m: Float32Array
    indptr: IntArray
    classes: Int8Array

    @staticmethod
    def empty() -> Polylines:
        return Polylines(np.zeros((0, 2), np.float32), np.zeros(1, np.int64), np.zeros(0, np.int8))

    @staticmethod
    def concatenate(parts: list[Polylines]) -> Polylines:
        if not parts:
            return Polylines.empty()
        sizes = np.array([p.points_m.shape[0] for p in parts], np.int64)
        shifts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        indptr = np.concatenate(
            [np.zeros(1, np.int64)] + [p.indptr[1:] + s for p, s in zip(parts, shifts, strict=True)]
        )
        return Polylines(
            np.concatenate([p.points_m for p in parts]).astype(np.float32),
            indptr.astype(np.int64),
            np.concatenate([p.classes for p in parts]).astype(np.int8),
        )

    def __len__(self) -> int:
        return int(self.classes.shape[0])

    def polyline(self, i: int) -> Float32Array:
        return self.points_m[self.indptr[i] : self.indptr[i + 1]]

    def same_as(self, other: Polylines) -> bool:
        return (
            np.array_equal(self.points_m, other.points_m)
            and np.array_equal(self.indptr, other.indptr)
            and np.array_equal(self.classes, other.classes)
        )


@dataclass(frozen=True, eq=False)
class MarkedRoad:
    """The true road as sensors see it: lines given as lateral offsets along a reference line.

    `stations_m` (K,) uniform arc length of `reference_m` (K, 2). Line b at station k lies at
    `reference_m[k] + offsets_m[b, k] * left_normal[k]` (offsets positive to the left).
    `kinds[b, k]` is the line's class id there (`KIND_ABSENT` where it does not exist or has no
    paint); `painted[b, k]` is true where paint is on the road (solid lines and edges everywhere
    they exist, dashed lines only inside their dashes). `lane_centres_m` (J, K) are the lateral
    offsets of the lanes a survey vehicle may drive in; `lane_counts` (K,) the number of lanes at
    each station (ground truth for tests and plots; sensors do not use it).
    """

    stations_m: FloatArray
    reference_m: FloatArray
    offsets_m: FloatArray
    kinds: Int8Array
    painted: BoolArray
    lane_centres_m: FloatArray
    lane_counts: Int8Array

    @property
    def station_step_m(self) -> float:
        return float(self.stations_m[1] - self.stations_m[0])

    def left_normals(self) -> FloatArray:
        return left_normals(self.reference_m)

    def same_as(self, other: MarkedRoad) -> bool:
        names = (
            "stations_m",
            "reference_m",
            "offsets_m",
            "kinds",
            "painted",
            "lane_centres_m",
            "lane_counts",
        )
        return all(np.array_equal(getattr(self, n), getattr(other, n)) for n in names)


def left_normals(polyline_m: FloatArray) -> FloatArray:
    """Unit normals pointing left of the direction of travel, one per vertex of (K, 2)."""
    tangent = np.gradient(polyline_m, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    normals: FloatArray = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    return normals


@dataclass(frozen=True)
class SensorModel:
    """How survey drives observe the road. Every knob is named with its unit."""

    drives_min: int
    drives_max: int
    gps_sigma_m: float
    yaw_sigma_deg: float
    point_noise_m: float
    trajectory_noise_m: float
    lateral_wander_m: float
    dropout_probability: float
    dropout_piece_m: float
    occlusions_per_km: float
    occlusion_length_m: tuple[float, float]
    confusion_probability: float
    false_positives_per_km: float
    false_positive_length_m: tuple[float, float]
    fov_half_width_m: float

    def __post_init__(self) -> None:
        if not 1 <= self.drives_min <= self.drives_max:
            raise InvalidParameterError(
                "drives_min..drives_max", (self.drives_min, self.drives_max), "1 <= min <= max"
            )
        for name in ("dropout_probability", "confusion_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidParameterError(name, getattr(self, name), "a probability in [0, 1]")
        for name in _NON_NEGATIVE:
            if not getattr(self, name) >= 0.0:
                raise InvalidParameterError(name, getattr(self, name), "a number >= 0")
        for name in ("dropout_piece_m", "fov_half_width_m"):
            if not getattr(self, name) > 0.0:
                raise InvalidParameterError(name, getattr(self, name), "a number > 0")
        for name in ("occlusion_length_m", "false_positive_length_m"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high:
                raise InvalidParameterError(name, (low, high), "(low, high) with 0 < low <= high")


_NON_NEGATIVE = (
    "gps_sigma_m",
    "yaw_sigma_deg",
    "point_noise_m",
    "trajectory_noise_m",
    "lateral_wander_m",
    "occlusions_per_km",
    "false_positives_per_km",
)


@dataclass(frozen=True, eq=False)
class Drive:
    """One survey drive: GPS trajectory, where the sensor saw anything, and observed strokes."""

    drive_id: int
    fov_half_width_m: float
    trajectory_m: Float32Array
    seen: BoolArray
    strokes: Polylines

    def same_as(self, other: Drive) -> bool:
        return (
            self.drive_id == other.drive_id
            and self.fov_half_width_m == other.fov_half_width_m
            and np.array_equal(self.trajectory_m, other.trajectory_m)
            and np.array_equal(self.seen, other.seen)
            and self.strokes.same_as(other.strokes)
        )


@dataclass(frozen=True, eq=False)
class _Pose:
    """One drive's vehicle path and its constant pose error."""

    offset_m: FloatArray  # (K,) lateral offset of the vehicle
    xy_m: FloatArray  # (K, 2) true vehicle position
    gps_offset_m: FloatArray  # (2,)
    yaw_error_rad: float
    seen: BoolArray  # (K,)


def simulate_drives(
    road: MarkedRoad, sensors: SensorModel, rng: np.random.Generator
) -> tuple[Drive, ...]:
    """Simulate between `drives_min` and `drives_max` drives over `road`."""
    count = int(rng.integers(sensors.drives_min, sensors.drives_max + 1))
    normals = road.left_normals()
    return tuple(_simulate_drive(i, road, normals, sensors, rng) for i in range(count))


def _simulate_drive(
    drive_id: int,
    road: MarkedRoad,
    normals: FloatArray,
    sensors: SensorModel,
    rng: np.random.Generator,
) -> Drive:
    pose = _vehicle_pose(road, normals, sensors, rng)
    strokes = Polylines.concatenate(
        [
            _observe_markings(road, normals, pose, sensors, rng),
            _false_positives(road, normals, pose, sensors, rng),
        ]
    )
    step = max(1, round(TRAJECTORY_SPACING_M / road.station_step_m))
    trajectory = pose.xy_m[::step] + pose.gps_offset_m
    trajectory += rng.normal(0.0, sensors.trajectory_noise_m, trajectory.shape)
    return Drive(
        drive_id=drive_id,
        fov_half_width_m=sensors.fov_half_width_m,
        trajectory_m=trajectory.astype(np.float32),
        seen=pose.seen[::step].copy(),
        strokes=strokes,
    )


def _vehicle_pose(
    road: MarkedRoad, normals: FloatArray, sensors: SensorModel, rng: np.random.Generator
) -> _Pose:
    lane = int(rng.integers(road.lane_centres_m.shape[0]))
    period_m = rng.uniform(80.0, 200.0)
    wander = sensors.lateral_wander_m * np.sin(
        2 * np.pi * road.stations_m / period_m + rng.uniform(0, 2 * np.pi)
    )
    offset = road.lane_centres_m[lane] + wander
    return _Pose(
        offset_m=offset,
        xy_m=road.reference_m + offset[:, None] * normals,
        gps_offset_m=rng.normal(0.0, sensors.gps_sigma_m, 2),
        yaw_error_rad=float(np.deg2rad(rng.normal(0.0, sensors.yaw_sigma_deg))),
        seen=_unoccluded(road.stations_m, sensors, rng),
    )


def _unoccluded(
    stations_m: FloatArray, sensors: SensorModel, rng: np.random.Generator
) -> BoolArray:
    """False inside occlusion gaps (a truck alongside, a tunnel of trees): nothing is seen."""
    length_m = float(stations_m[-1])
    count = int(rng.poisson(sensors.occlusions_per_km * length_m / 1000.0))
    starts = rng.uniform(0.0, length_m, count)
    lengths = rng.uniform(*sensors.occlusion_length_m, count)
    inside = (stations_m[None, :] >= starts[:, None]) & (
        stations_m[None, :] < (starts + lengths)[:, None]
    )
    seen: BoolArray = np.logical_not(inside.any(axis=0))
    return seen


def _observe_markings(
    road: MarkedRoad,
    normals: FloatArray,
    pose: _Pose,
    sensors: SensorModel,
    rng: np.random.Generator,
) -> Polylines:
    visible = road.painted & pose.seen[None, :]
    visible &= np.abs(road.offsets_m - pose.offset_m[None, :]) <= sensors.fov_half_width_m
    pieces = np.floor(
        (road.stations_m + rng.uniform(0, sensors.dropout_piece_m)) / sensors.dropout_piece_m
    ).astype(np.int64)
    kept = rng.random((road.offsets_m.shape[0], int(pieces[-1]) + 1)) >= sensors.dropout_probability
    visible &= kept[:, pieces]
    line_idx, station_idx, stroke_starts = class_runs(visible, road.kinds, pieces)
    step = max(1, round(STROKE_VERTEX_SPACING_M / road.station_step_m))
    keep = decimate_runs(stroke_starts, station_idx.shape[0], step)
    line_idx, station_idx = line_idx[keep], station_idx[keep]
    indptr = np.searchsorted(np.flatnonzero(keep), stroke_starts).astype(np.int64)
    xy = (
        road.reference_m[station_idx]
        + road.offsets_m[line_idx, station_idx][:, None] * normals[station_idx]
    )
    observed = _apply_pose_error(xy, pose, station_idx, sensors, rng)
    classes = road.kinds[line_idx[indptr[:-1]], station_idx[indptr[:-1]]].astype(np.int8)
    return _drop_short(Polylines(observed, indptr, _confuse(classes, sensors, rng)))


def class_runs(
    visible: BoolArray, kinds: Int8Array, pieces: IntArray
) -> tuple[IntArray, IntArray, IntArray]:
    """Contiguous runs of `visible` samples of one class inside one piece, line by line.

    `visible` and `kinds` are (lines, stations), `pieces` (stations,) cuts runs where it changes.

    Returns the (line, station) index of every visible sample, in stroke order, and the
    `indptr` of strokes over those samples.
    """
    n_lines, n_stations = visible.shape
    pad = np.zeros((n_lines, 1), bool)
    flat_visible = np.concatenate([visible, pad], axis=1).ravel()
    flat_kind = np.concatenate([kinds, pad.astype(np.int8)], axis=1).ravel()
    flat_piece = np.tile(np.concatenate([pieces, [-1]]), n_lines)
    continues = np.zeros_like(flat_visible)
    continues[1:] = (
        flat_visible[:-1] & (flat_kind[1:] == flat_kind[:-1]) & (flat_piece[1:] == flat_piece[:-1])
    )
    starts_flat = flat_visible & ~continues
    samples = np.flatnonzero(flat_visible)
    stroke_of_sample = np.cumsum(starts_flat)[samples] - 1
    n_strokes = int(starts_flat.sum())
    counts = np.bincount(stroke_of_sample, minlength=n_strokes)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    line_idx, station_idx = np.divmod(samples, n_stations + 1)
    return line_idx.astype(np.int64), station_idx.astype(np.int64), indptr


def decimate_runs(indptr: IntArray, n_samples: int, step: int) -> BoolArray:
    """Keep every `step`-th sample of each run (`indptr` over samples) plus its last sample."""
    counts = np.diff(indptr)
    rank = np.arange(n_samples) - np.repeat(indptr[:-1], counts)
    keep: BoolArray = rank % step == 0
    keep[indptr[1:][counts > 0] - 1] = True
    return keep


def _apply_pose_error(
    xy_m: FloatArray,
    pose: _Pose,
    station_idx: IntArray,
    sensors: SensorModel,
    rng: np.random.Generator,
) -> Float32Array:
    cos_yaw, sin_yaw = np.cos(pose.yaw_error_rad), np.sin(pose.yaw_error_rad)
    vehicle = pose.xy_m[station_idx]
    rel = xy_m - vehicle
    rotated = np.stack(
        [cos_yaw * rel[:, 0] - sin_yaw * rel[:, 1], sin_yaw * rel[:, 0] + cos_yaw * rel[:, 1]],
        axis=1,
    )
    noise = rng.normal(0.0, sensors.point_noise_m, rel.shape)
    observed: Float32Array = (vehicle + rotated + pose.gps_offset_m + noise).astype(np.float32)
    return observed


def _confuse(classes: Int8Array, sensors: SensorModel, rng: np.random.Generator) -> Int8Array:
    """Solid and dashed strokes swap class with `confusion_probability`."""
    flip = (rng.random(classes.shape[0]) < sensors.confusion_probability) & (classes <= 1)
    out = classes.copy()
    out[flip] = 1 - classes[flip]
    return out


def _drop_short(lines: Polylines) -> Polylines:
    """Remove strokes of a single vertex (a run of one sample carries no direction)."""
    counts = np.diff(lines.indptr)
    if (counts >= 2).all():
        return lines
    keep_stroke = counts >= 2
    keep_point = np.repeat(keep_stroke, counts)
    indptr = np.concatenate([[0], np.cumsum(counts[keep_stroke])]).astype(np.int64)
    return Polylines(lines.points_m[keep_point], indptr, lines.classes[keep_stroke])


def _false_positives(
    road: MarkedRoad,
    normals: FloatArray,
    pose: _Pose,
    sensors: SensorModel,
    rng: np.random.Generator,
) -> Polylines:
    """Spurious strokes (tar seams, shadows, kerbs) inside the field of view."""
    length_m = float(road.stations_m[-1])
    count = int(rng.poisson(sensors.false_positives_per_km * length_m / 1000.0))
    parts = [_false_positive(road, normals, pose, sensors, rng) for _ in range(count)]
    return Polylines.concatenate([p for p in parts if p is not None])


def _false_positive(
    road: MarkedRoad,
    normals: FloatArray,
    pose: _Pose,
    sensors: SensorModel,
    rng: np.random.Generator,
) -> Polylines | None:
    k = int(rng.integers(road.stations_m.shape[0]))
    length_m = rng.uniform(*sensors.false_positive_length_m)
    lateral_m = pose.offset_m[k] + rng.uniform(-sensors.fov_half_width_m, sensors.fov_half_width_m)
    tangent = np.array([normals[k, 1], -normals[k, 0]])
    angle = rng.normal(0.0, 0.15)
    direction = np.cos(angle) * tangent + np.sin(angle) * normals[k]
    n_vertices = max(2, int(np.ceil(length_m / STROKE_VERTEX_SPACING_M)) + 1)
    along = np.linspace(0.0, length_m, n_vertices)
    start = road.reference_m[k] + lateral_m * normals[k]
    xy = start + along[:, None] * direction + pose.gps_offset_m
    xy += rng.normal(0.0, sensors.point_noise_m, xy.shape)
    if not pose.seen[k]:
        return None
    cls = np.array([rng.integers(0, 3)], np.int8)
    return Polylines(xy.astype(np.float32), np.array([0, n_vertices], np.int64), cls)
