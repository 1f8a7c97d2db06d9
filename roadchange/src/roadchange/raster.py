"""Rasterizer: road-aligned bird's-eye-view windows of the current map and the drives.

A window is `WINDOW_PX` x `WINDOW_PX` pixels of `RESOLUTION_M` metres (32 m x 32 m), centred on
the reference path at a station and rotated so that the road runs along the image's rows:

- row 0 is `HALF_WINDOW_M` *ahead* of the centre (direction of increasing station), the last row
  the same distance behind; column 0 is `HALF_WINDOW_M` to the *left*, the last column to the
  right. Pixel (r, c) covers along-track `u` in (16 - 0.25 (r+1), 16 - 0.25 r] metres and lateral
  `v` (positive left) in (16 - 0.25 (c+1), 16 - 0.25 c].

The reference path is the current map's centreline. A segment without a current map (`new_road`)
uses the drives' mean trajectory instead: each trajectory is resampled at equal fractions of its
own arc length and the drives are averaged point by point (drives all run the whole segment in
the same direction), which centres the windows on the driven lanes rather than on the road's
middle: close enough for 32 m windows, and computed without looking at the label.

Channels (`CHANNELS`), all float32 in [0, 1]:

| channel            | value                                                                |
|--------------------|----------------------------------------------------------------------|
| `map_solid`        | 1 where the current map has a solid line                             |
| `map_dashed`       | 1 where it has a dashed line (mapped as a continuous polyline)       |
| `map_edge`         | 1 where it has a road edge                                           |
| `map_centreline`   | 1 where it has a lane centreline                                     |
| `drive_solid`      | fraction of drives that observed a solid stroke in the pixel         |
| `drive_dashed`     | same for dashed strokes                                              |
| `drive_edge`       | same for road edges                                                  |
| `drive_trajectory` | fraction of drives whose trajectory crosses the pixel                |
| `drive_coverage`   | fraction of drives whose sensor saw the pixel (field of view, minus  |
|                    | occlusions)                                                          |

Polylines are drawn by resampling them every `DRAW_STEP_M` (< one pixel) and scatter-adding the
samples with `np.bincount`; a pixel counts once per drive (repeated consecutive samples of one
drive in one pixel are dropped first). Only the samples near a window are transformed: samples are
grouped in blocks of consecutive points whose bounding boxes are tested against each window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from roadchange.drives import (
    CLASS_CENTRELINE,
    CLASS_DASHED,
    CLASS_EDGE,
    CLASS_SOLID,
    BoolArray,
    FloatArray,
    IntArray,
    Polylines,
    left_normals,
)
from roadchange.errors import InvalidParameterError
from roadchange.world import CHANGE_TYPES, STRUCTURAL_CHANGES, Segment

WINDOW_PX = 128
RESOLUTION_M = 0.25
HALF_WINDOW_M = WINDOW_PX * RESOLUTION_M / 2
CHANNELS: tuple[str, ...] = (
    "map_solid",
    "map_dashed",
    "map_edge",
    "map_centreline",
    "drive_solid",
    "drive_dashed",
    "drive_edge",
    "drive_trajectory",
    "drive_coverage",
)
N_CHANNELS = len(CHANNELS)
DRAW_STEP_M = 0.2
"""Polyline resampling step: below the pixel size, so a drawn line has no holes."""
MIN_OVERLAP_M = 4.0
"""A window is labelled changed when the change span overlaps its along-track extent this much."""

_MAP_CHANNEL = {CLASS_SOLID: 0, CLASS_DASHED: 1, CLASS_EDGE: 2, CLASS_CENTRELINE: 3}
_TRAJECTORY_CHANNEL = 7
_COVERAGE_CHANNEL = 8
_BLOCK = 32
_PIXELS = WINDOW_PX * WINDOW_PX

Float32Array = npt.NDArray[np.float32]
Allocate = Callable[[tuple[int, ...], Any], Float32Array]  # (shape, dtype) -> array to fill


def window_stations(length_m: float, *, stride_m: float = 16.0) -> FloatArray:
    """Centre stations of the windows over a segment, `stride_m` apart and centred on it.

    As many windows as fit with their centres at least `stride_m / 2` from both ends, the
    sequence centred on the segment: a 400 m segment gets 25 windows at 8, 24, ..., 392 m, which
    with the 32 m windows cover it end to end with half-window overlap. A segment shorter than
    the stride gets one window at its middle.
    """
    if not length_m > 0:
        raise InvalidParameterError("length_m", length_m, "a positive length in metres")
    if not stride_m > 0:
        raise InvalidParameterError("stride_m", stride_m, "a positive stride in metres")
    count = max(1, int(np.floor((length_m - stride_m) / stride_m + 1e-9)) + 1)
    first = (length_m - (count - 1) * stride_m) / 2
    stations: FloatArray = first + stride_m * np.arange(count, dtype=np.float64)
    return stations


@dataclass(frozen=True, eq=False)
class _Frames:
    """Window centres (N, 2), unit along-track `tangents` (N, 2), left `normals` (N, 2)."""

    centres: FloatArray
    tangents: FloatArray
    normals: FloatArray

    def __len__(self) -> int:
        return int(self.centres.shape[0])


@dataclass(frozen=True, eq=False)
class _Samples:
    """Dense points to draw: `points` (P, 2) and the `channel` (P,) each one goes to."""

    points: Float32Array
    channel: IntArray


def rasterize_windows(
    segment: Segment, stations: npt.ArrayLike, *, allocate: Allocate | None = None
) -> Float32Array:
    """Rasterize windows centred at `stations`: (N, N_CHANNELS, WINDOW_PX, WINDOW_PX) float32.

    Reads the current map and the drives only (never the label or the true road). Drives are
    first aligned to the map (`align_drives`). `allocate(shape, dtype)` gives the array to draw
    into (a model handle's `empty`: shared memory the model server reads in place); default a
    fresh array.
    """
    segment = align_drives(segment)
    frames = _frames(reference_path(segment), _as_stations(stations))
    n_drives = max(len(segment.drives), 1)
    shape = (len(frames), N_CHANNELS, WINDOW_PX, WINDOW_PX)
    out = np.zeros(shape, np.float32) if allocate is None else allocate(shape, np.float32)
    if allocate is not None:
        out[...] = 0.0
    _scatter(_all_samples(segment), frames, out)
    np.minimum(out[:, :4], 1.0, out=out[:, :4])
    drive_part = out[:, 4:_COVERAGE_CHANNEL]
    np.multiply(drive_part, 1.0 / n_drives, out=drive_part)
    np.minimum(drive_part, 1.0, out=drive_part)
    out[:, _COVERAGE_CHANNEL] = _coverage(segment, frames) / n_drives
    return out


ALIGN_CLIP_M = 1.0
"""Trajectory points further than this from the robust fit are ignored when aligning a drive."""
ALIGN_RIDGE = 0.01
"""Pulls the along-road part of a drive's offset to 0 where a straight road leaves it undetermined."""


def drive_offsets(segment: Segment) -> FloatArray:
    """Estimated GPS offset (D, 2) of each drive, to subtract before drawing it.

    A drive follows a lane: its trajectory lies near one of the current map's lane centrelines,
    displaced by its GPS offset (constant per drive) and a small wander. The offset is the robust
    least-squares fit of the trajectory's distances to the nearest lane centreline, measured along
    that centreline's normal (three reweighting rounds; points off by more than `ALIGN_CLIP_M`
    from the median residual, e.g. inside a lane shift or a merge, are ignored). Without a
    current map (`new_road`) nothing is aligned. Reads the map and the drives only.
    """
    offsets = np.zeros((len(segment.drives), 2))
    centres = _lane_centre_points(segment)
    if centres.shape[0] < 2:
        return offsets
    normals = _point_normals(centres, segment.current_map.centreline_m.astype(np.float64))
    for i, drive in enumerate(segment.drives):
        offsets[i] = _fit_offset(drive.trajectory_m[::2].astype(np.float64), centres, normals)
    return offsets


def _lane_centre_points(segment: Segment) -> FloatArray:
    lines = segment.current_map.lines
    keep = np.repeat(lines.classes == CLASS_CENTRELINE, np.diff(lines.indptr))
    points: FloatArray = lines.points_m[keep].astype(np.float64)
    return points


def _point_normals(points: FloatArray, centreline: FloatArray) -> FloatArray:
    """Left normal of the map's centreline at the vertex nearest to each point."""
    nearest = _nearest(points, centreline)
    normals: FloatArray = left_normals(centreline)[nearest]
    return normals


def _nearest(points: FloatArray, targets: FloatArray) -> IntArray:
    """Index of the nearest target of each point (all pairs, as one matrix product)."""
    d2 = (targets**2).sum(axis=1)[None, :] - 2.0 * points @ targets.T
    nearest: IntArray = d2.argmin(axis=1)
    return nearest


def _fit_offset(trajectory: FloatArray, centres: FloatArray, normals: FloatArray) -> FloatArray:
    nearest = _nearest(trajectory, centres)
    n = normals[nearest]
    lateral = ((trajectory - centres[nearest]) * n).sum(axis=1)
    offset = np.zeros(2)
    for _ in range(3):
        residual = lateral - n @ offset
        weight = (np.abs(residual - np.median(residual)) < ALIGN_CLIP_M).astype(np.float64)
        total = max(weight.sum(), 1.0)
        a = (n * weight[:, None]).T @ n + ALIGN_RIDGE * total * np.eye(2)
        offset = np.linalg.solve(a, (n * (weight * lateral)[:, None]).sum(axis=0))
    return offset


def align_drives(segment: Segment) -> Segment:
    """The segment with each drive's trajectory and strokes moved by minus its `drive_offsets`.

    Survey drives carry a GPS offset of their own (hard preset: 0.5 m sigma), as large as the
    smallest lane shift; aligning each drive to the map's lanes before drawing makes the drives
    agree with each other and with the map wherever the road did not change.
    """
    offsets = drive_offsets(segment).astype(np.float32)
    if not offsets.any():
        return segment
    drives = tuple(
        replace(
            drive,
            trajectory_m=drive.trajectory_m - offset,
            strokes=Polylines(
                drive.strokes.points_m - offset, drive.strokes.indptr, drive.strokes.classes
            ),
        )
        for drive, offset in zip(segment.drives, offsets, strict=True)
    )
    return replace(segment, drives=drives)


def _as_stations(stations: npt.ArrayLike) -> FloatArray:
    array = np.asarray(stations, dtype=np.float64)
    if array.ndim != 1 or not np.isfinite(array).all():
        raise InvalidParameterError("stations", array.shape, "a 1-d array of finite stations (m)")
    return array


def reference_path(segment: Segment) -> FloatArray:
    """The path windows follow: the map's centreline, else the drives' mean trajectory."""
    if not segment.current_map.is_empty:
        return segment.current_map.centreline_m.astype(np.float64)
    if not segment.drives:
        raise InvalidParameterError(
            "segment", segment.segment_id, "a segment with a current map or at least one drive"
        )
    n_points = max(2, int(np.ceil(segment.length_m)) + 1)
    resampled = [
        _resample_by_fraction(d.trajectory_m.astype(np.float64), n_points) for d in segment.drives
    ]
    mean: FloatArray = np.mean(resampled, axis=0)
    return mean


def _resample_by_fraction(path: FloatArray, n_points: int) -> FloatArray:
    arc = _arc_length(path)
    targets = np.linspace(0.0, arc[-1], n_points)
    return np.stack([np.interp(targets, arc, path[:, 0]), np.interp(targets, arc, path[:, 1])], 1)


def _arc_length(path: FloatArray) -> FloatArray:
    steps = np.linalg.norm(np.diff(path, axis=0), axis=1)
    arc: FloatArray = np.concatenate([[0.0], np.cumsum(steps)])
    return arc


def _frames(path: FloatArray, stations: FloatArray) -> _Frames:
    arc = _arc_length(path)

    def at(s: FloatArray) -> FloatArray:
        return np.stack([np.interp(s, arc, path[:, 0]), np.interp(s, arc, path[:, 1])], axis=1)

    ahead = at(np.minimum(stations + 1.0, arc[-1]))
    behind = at(np.maximum(stations - 1.0, 0.0))
    tangents = ahead - behind
    tangents /= np.maximum(np.linalg.norm(tangents, axis=1, keepdims=True), 1e-12)
    normals = np.stack([-tangents[:, 1], tangents[:, 0]], axis=1)
    return _Frames(at(stations), tangents, normals)


def densify(lines: Polylines, step_m: float = DRAW_STEP_M) -> tuple[Float32Array, IntArray]:
    """Points every <= `step_m` along each polyline, in order, and their polyline index.

    Every vertex is kept; a segment of length l between two vertices gets ceil(l / step_m) - 1
    evenly spaced interior points.
    """
    points = lines.points_m.astype(np.float32)
    n_points = points.shape[0]
    owner = np.repeat(np.arange(len(lines)), np.diff(lines.indptr))
    is_end = np.ones(n_points, bool)
    is_end[:-1] = owner[:-1] != owner[1:]
    delta = np.zeros_like(points)
    delta[:-1] = points[1:] - points[:-1]
    delta[is_end] = 0.0
    length = np.sqrt(delta[:, 0] ** 2 + delta[:, 1] ** 2)
    count = np.maximum(np.ceil(length / np.float32(step_m)).astype(np.int64), 1)
    vertex = np.repeat(np.arange(n_points), count)
    first = np.cumsum(count) - count
    t = ((np.arange(vertex.shape[0]) - first[vertex]) / count[vertex]).astype(np.float32)
    dense: Float32Array = points[vertex] + t[:, None] * delta[vertex]
    return dense, owner[vertex]


def _all_samples(segment: Segment) -> _Samples:
    """Densified map lines, drive strokes and trajectories, each sample tagged with its channel."""
    map_lines = segment.current_map.lines
    map_channel = np.array([_MAP_CHANNEL[c] for c in range(len(_MAP_CHANNEL))], np.int8)
    parts = [Polylines(map_lines.points_m, map_lines.indptr, map_channel[map_lines.classes])]
    for drive in segment.drives:
        strokes = drive.strokes
        parts.append(Polylines(strokes.points_m, strokes.indptr, strokes.classes + 4))
        n_vertices = drive.trajectory_m.shape[0]
        parts.append(
            Polylines(
                drive.trajectory_m,
                np.array([0, n_vertices], np.int64),
                np.array([_TRAJECTORY_CHANNEL], np.int8),
            )
        )
    lines = Polylines.concatenate(parts)
    points, owner = densify(lines)
    return _Samples(points, lines.classes[owner].astype(np.int64))


def _scatter(samples: _Samples, frames: _Frames, out: Float32Array) -> None:
    """Add to `out` (N, C, H, W) one count per run of consecutive samples in one pixel."""
    if samples.points.shape[0] == 0 or len(frames) == 0:
        return
    blocks = _Blocks.of(samples)
    keys = np.concatenate(
        [_window_keys(blocks, frames, w) + w * N_CHANNELS * _PIXELS for w in range(len(frames))]
    )
    if keys.shape[0] == 0:
        return
    fresh = np.empty(keys.shape[0], bool)
    fresh[0] = True
    np.not_equal(keys[1:], keys[:-1], out=fresh[1:])
    np.add.at(out.reshape(-1), keys[fresh], np.float32(1.0))


@dataclass(frozen=True, eq=False)
class _Blocks:
    """Samples in blocks of `_BLOCK` consecutive points, with each block's bounding circle.

    The last block is padded with copies of the last sample, which the run-length
    deduplication of `_scatter` drops.
    """

    x: Float32Array
    y: Float32Array
    channel_base: IntArray  # channel * pixels, per point
    centres: FloatArray
    radii: FloatArray

    @staticmethod
    def of(samples: _Samples) -> _Blocks:
        n_points = samples.points.shape[0]
        pad = -n_points % _BLOCK
        points = np.concatenate([samples.points, np.repeat(samples.points[-1:], pad, axis=0)])
        channel = np.concatenate([samples.channel, np.repeat(samples.channel[-1:], pad)])
        xs, ys = points[:, 0].reshape(-1, _BLOCK), points[:, 1].reshape(-1, _BLOCK)
        low = np.stack([xs.min(axis=1), ys.min(axis=1)], axis=1)
        high = np.stack([xs.max(axis=1), ys.max(axis=1)], axis=1)
        return _Blocks(
            x=points[:, 0].astype(np.float32),
            y=points[:, 1].astype(np.float32),
            channel_base=channel * _PIXELS,
            centres=(low + high) / 2,
            radii=np.linalg.norm(high - low, axis=1) / 2,
        )


_LANE = np.arange(_BLOCK)


def _window_keys(blocks: _Blocks, frames: _Frames, w: int) -> IntArray:
    """Channel-major pixel keys of the samples that fall inside window `w`, in sample order."""
    cx, cy = frames.centres[w]
    tx, ty = frames.tangents[w]
    rel = blocks.centres - frames.centres[w]
    du = rel @ frames.tangents[w]
    dv = rel @ frames.normals[w]
    reach = HALF_WINDOW_M + blocks.radii
    chosen = np.flatnonzero((np.abs(du) <= reach) & (np.abs(dv) <= reach))
    index = (chosen[:, None] * _BLOCK + _LANE).ravel()
    px = blocks.x[index] - np.float32(cx)
    py = blocks.y[index] - np.float32(cy)
    scale = np.float32(1.0 / RESOLUTION_M)
    half_px = np.float32(HALF_WINDOW_M / RESOLUTION_M)
    row = np.floor(half_px - (px * np.float32(tx) + py * np.float32(ty)) * scale)
    col = np.floor(half_px - (py * np.float32(tx) - px * np.float32(ty)) * scale)
    inside = (row >= 0) & (row < WINDOW_PX) & (col >= 0) & (col < WINDOW_PX)
    pixel = row[inside].astype(np.int64) * WINDOW_PX + col[inside].astype(np.int64)
    keys: IntArray = blocks.channel_base[index[inside]] + pixel
    return keys


def _row_u() -> FloatArray:
    u: FloatArray = HALF_WINDOW_M - (np.arange(WINDOW_PX, dtype=np.float64) + 0.5) * RESOLUTION_M
    return u


def _coverage(segment: Segment, frames: _Frames) -> Float32Array:
    """Number of drives that saw each pixel: within their field of view and not occluded.

    Per drive, window and row, the covered columns are one interval around the trajectory; the
    intervals are summed with a difference array and a cumulative sum along the row.
    """
    n_windows = len(frames)
    if not segment.drives:
        return np.zeros((n_windows, WINDOW_PX, WINDOW_PX), np.float32)
    lateral, seen = _trajectories_in_windows(segment, frames)  # (N, D, rows)
    fov = np.array([d.fov_half_width_m for d in segment.drives])[None, :, None]
    lateral = np.where(seen, lateral, 0.0)
    first = np.ceil((HALF_WINDOW_M - lateral - fov) / RESOLUTION_M - 0.5).astype(np.int64)
    last = np.floor((HALF_WINDOW_M - lateral + fov) / RESOLUTION_M - 0.5).astype(np.int64)
    first, last = np.maximum(first, 0), np.minimum(last, WINDOW_PX - 1)
    ok = seen & (first <= last)
    row_base = (np.arange(n_windows)[:, None, None] * WINDOW_PX + np.arange(WINDOW_PX)) * (
        WINDOW_PX + 1
    )
    row_base = np.broadcast_to(row_base, ok.shape)
    size = n_windows * WINDOW_PX * (WINDOW_PX + 1)
    diff = np.bincount(row_base[ok] + first[ok], minlength=size)
    diff -= np.bincount(row_base[ok] + last[ok] + 1, minlength=size)
    counts = np.cumsum(diff.reshape(n_windows, WINDOW_PX, WINDOW_PX + 1), axis=2)
    coverage: Float32Array = counts[:, :, :WINDOW_PX].astype(np.float32)
    return coverage


_GROUP_SHIFT_M = 1.0e4  # separates (window, drive) groups interpolated in one np.interp call


def _near_vertices(
    trajectory: FloatArray, frames: _Frames
) -> tuple[IntArray, IntArray, FloatArray, FloatArray]:
    """(window, vertex) pairs with the vertex within `_NEAR_M` of the window centre along both
    window axes, sorted by window then vertex, and the vertex's (u, v) in that window."""
    offset = (frames.centres * frames.tangents).sum(axis=1)
    along = frames.tangents @ trajectory.T - offset[:, None]  # (N, T)
    window, vertex = np.nonzero(np.abs(along) <= _NEAR_M)
    rel = trajectory[vertex] - frames.centres[window]
    lateral = (rel * frames.normals[window]).sum(axis=1)
    near = np.abs(lateral) <= _NEAR_M
    window, vertex = window[near], vertex[near]
    return window, vertex, along[window, vertex], lateral[near]


_NEAR_M = 2 * HALF_WINDOW_M + 20.0


def _trajectories_in_windows(segment: Segment, frames: _Frames) -> tuple[FloatArray, BoolArray]:
    """Per window, drive and row: the trajectory's lateral offset and whether it saw anything.

    Trajectory vertices near each window are expressed in the window's frame; their along-track
    coordinate increases along a drive, so all (window, drive) groups are interpolated in one
    `np.interp` call by shifting group g by `g * _GROUP_SHIFT_M`.
    """
    n_windows, n_drives = len(frames), len(segment.drives)
    trajectory = np.concatenate([d.trajectory_m for d in segment.drives]).astype(np.float64)
    seen = np.concatenate([d.seen for d in segment.drives]).astype(np.float64)
    drive_of = np.repeat(np.arange(n_drives), [d.trajectory_m.shape[0] for d in segment.drives])
    window, vertex, u, v = _near_vertices(trajectory, frames)
    shape = (n_windows, n_drives, WINDOW_PX)
    if window.shape[0] < 2:
        return np.zeros(shape), np.zeros(shape, bool)
    group = window * n_drives + drive_of[vertex]
    known_u = u + group * _GROUP_SHIFT_M
    n_groups = n_windows * n_drives
    rows = (_row_u()[None, :] + np.arange(n_groups)[:, None] * _GROUP_SHIFT_M).reshape(shape)
    lateral = np.interp(rows.ravel(), known_u, v).reshape(shape)
    seen_fraction = np.interp(rows.ravel(), known_u, seen[vertex]).reshape(shape)
    first = np.searchsorted(group, np.arange(n_groups))
    last = np.searchsorted(group, np.arange(n_groups), side="right") - 1
    has = last >= first
    low = np.where(has, known_u[np.minimum(first, known_u.shape[0] - 1)], np.inf)
    high = np.where(has, known_u[np.maximum(last, 0)], -np.inf)
    inside = (rows >= low.reshape(n_windows, n_drives, 1)) & (
        rows <= high.reshape(n_windows, n_drives, 1)
    )
    return lateral, inside & (seen_fraction >= 0.5)


@dataclass(frozen=True, eq=False)
class WindowTargets:
    """Per-window training targets from the label's change span.

    `changed` (N,) float32 1.0 where the window's along-track extent overlaps the change span by
    at least `MIN_OVERLAP_M`; `remap` (N,) float32 1.0 where changed and the change is
    structural; `change_type` (N,) int64 index into `CHANGE_TYPES` (0, "none", where unchanged).
    """

    changed: Float32Array
    remap: Float32Array
    change_type: npt.NDArray[np.int64]


def window_targets(segment: Segment, stations: npt.ArrayLike) -> WindowTargets:
    """Targets of the windows centred at `stations` (evaluation and training only)."""
    centres = _as_stations(stations)
    label = segment.label
    if label.change_span_m is None or not label.changed:
        changed = np.zeros(centres.shape[0], bool)
    else:
        start, end = label.change_span_m
        low = np.maximum(centres - HALF_WINDOW_M, start)
        high = np.minimum(centres + HALF_WINDOW_M, end)
        changed = (high - low) >= min(MIN_OVERLAP_M, end - start)
    remap = changed & (label.change_type in STRUCTURAL_CHANGES)
    type_index = CHANGE_TYPES.index(label.change_type)
    return WindowTargets(
        changed=changed.astype(np.float32),
        remap=remap.astype(np.float32),
        change_type=np.where(changed, type_index, 0).astype(np.int64),
    )
