"""The rasterizer: known geometry lands on known pixels, in a road-aligned frame."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from roadchange.drives import CLASS_DASHED, CLASS_SOLID, Drive, Polylines
from roadchange.errors import InvalidParameterError
from roadchange.raster import (
    CHANNELS,
    N_CHANNELS,
    RESOLUTION_M,
    WINDOW_PX,
    densify,
    rasterize_windows,
    reference_path,
    window_stations,
    window_targets,
)
from roadchange.world import CHANGE_TYPES, Label, RoadMap, Segment, generate_segment

CH = {name: i for i, name in enumerate(CHANNELS)}
STRAIGHT_X = np.arange(0.0, 401.0)


def lines(*polylines: tuple[list[list[float]], int]) -> Polylines:
    points = [np.asarray(p, np.float32) for p, _ in polylines]
    indptr = np.concatenate([[0], np.cumsum([len(p) for p in points])]).astype(np.int64)
    return Polylines(np.concatenate(points), indptr, np.array([c for _, c in polylines], np.int8))


def straight_segment(rotate_rad: float = 0.0, shift_m: tuple[float, float] = (0.0, 0.0)) -> Segment:
    """400 m of straight road along +x, one solid line at y = +2.1, a dash at y = -3.1.

    Drive 0 saw the solid line over x in [150, 250]; drive 1 saw nothing and was occluded for
    x in [190, 200). Both drove along y = -1.8 with a 5 m field of view.
    """
    rotation = np.array(
        [[np.cos(rotate_rad), -np.sin(rotate_rad)], [np.sin(rotate_rad), np.cos(rotate_rad)]]
    )

    def place(points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, np.float64) @ rotation.T + shift_m).astype(np.float32)

    def placed(polylines: Polylines) -> Polylines:
        return dataclasses.replace(polylines, points_m=place(polylines.points_m))

    centreline = np.stack([STRAIGHT_X, np.zeros_like(STRAIGHT_X)], axis=1)
    map_lines = lines(
        ([[0.0, 2.1], [400.0, 2.1]], CLASS_SOLID), ([[205.1, -3.1], [205.8, -3.1]], CLASS_DASHED)
    )
    trajectory = place(np.stack([STRAIGHT_X, np.full_like(STRAIGHT_X, -1.8)], axis=1))
    seen_1 = ~((STRAIGHT_X >= 190) & (STRAIGHT_X < 200))
    drives = (
        Drive(0, 5.0, trajectory, np.ones(401, bool), placed(lines(([[150, 2.1], [250, 2.1]], 0)))),
        Drive(1, 5.0, trajectory, seen_1, Polylines.empty()),
    )
    template = generate_segment(seed=0, index=0, preset="default", change_probability=0.0)
    return dataclasses.replace(
        template,
        length_m=400.0,
        current_map=RoadMap(place(centreline), placed(map_lines)),
        drives=drives,
    )


def window_at(segment: Segment, station_m: float) -> np.ndarray:
    raster = rasterize_windows(segment, np.array([station_m]))
    assert raster.shape == (1, N_CHANNELS, WINDOW_PX, WINDOW_PX)
    assert raster.dtype == np.float32
    return raster[0]


def test_a_map_line_2_1_m_left_of_the_centreline_fills_column_55() -> None:
    window = window_at(straight_segment(), 200.0)
    solid = window[CH["map_solid"]]
    assert np.array_equal(np.flatnonzero(solid.any(axis=0)), [55])  # floor((16 - 2.1) / 0.25)
    assert (solid[:, 55] == 1.0).all()


def test_a_dash_5_1_to_5_8_m_ahead_and_3_1_m_right_lands_on_rows_40_to_43_of_column_76() -> None:
    dashed = window_at(straight_segment(), 200.0)[CH["map_dashed"]]
    rows, cols = np.nonzero(dashed)
    assert set(cols.tolist()) == {76}  # floor((16 + 3.1) / 0.25)
    assert sorted(rows.tolist()) == [40, 41, 42, 43]  # floor((16 - 5.8) / 0.25) .. (16 - 5.1)
    assert dashed.sum() == 4.0


def test_drive_channels_are_the_fraction_of_drives_that_saw_a_pixel() -> None:
    window = window_at(straight_segment(), 200.0)
    drive_solid = window[CH["drive_solid"]]
    assert np.array_equal(np.flatnonzero(drive_solid.any(axis=0)), [55])
    assert np.allclose(drive_solid[:, 55], 0.5)  # one drive of two
    trajectory = window[CH["drive_trajectory"]]
    assert np.array_equal(np.flatnonzero(trajectory.any(axis=0)), [71])  # floor(17.8 / 0.25)
    assert np.allclose(trajectory[:, 71], 1.0)
    assert window[CH["drive_dashed"]].sum() == 0
    assert window[CH["drive_edge"]].sum() == 0


def test_coverage_is_the_field_of_view_around_the_trajectory_minus_occlusions() -> None:
    coverage = window_at(straight_segment(), 200.0)[CH["drive_coverage"]]
    # column centres v = 16 - (c + 0.5) / 4 within 5 m of v = -1.8: columns 51..90
    ahead = coverage[23]  # u = +10.125 m: both drives saw it
    assert np.array_equal(np.flatnonzero(ahead), np.arange(51, 91))
    assert np.allclose(ahead[51:91], 1.0)
    occluded = coverage[83]  # u = -4.875 m, x = 195.1: drive 1 was occluded
    assert np.allclose(occluded[51:91], 0.5)
    assert occluded.sum() == pytest.approx(0.5 * 40)


@pytest.mark.parametrize("angle_rad", [np.pi / 2, 2.2, -0.7])
def test_windows_are_road_aligned_whatever_the_heading(angle_rad: float) -> None:
    reference = window_at(straight_segment(), 200.0)
    turned = window_at(straight_segment(angle_rad, (1234.5, -987.25)), 200.0)
    map_channels = slice(0, 4)
    assert np.array_equal(turned[map_channels], reference[map_channels])
    assert np.abs(turned - reference).mean() < 1e-3


def test_a_generated_segment_rasterizes_the_same_after_a_rigid_motion() -> None:
    segment = generate_segment(seed=4, index=2, preset="default")
    angle, shift = 1.1, np.array([-300.0, 50.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def move(points: np.ndarray) -> np.ndarray:
        return (points.astype(np.float64) @ rotation.T + shift).astype(np.float32)

    moved = dataclasses.replace(
        segment,
        current_map=RoadMap(
            move(segment.current_map.centreline_m),
            dataclasses.replace(
                segment.current_map.lines, points_m=move(segment.current_map.lines.points_m)
            ),
        ),
        drives=tuple(
            dataclasses.replace(
                d,
                trajectory_m=move(d.trajectory_m),
                strokes=dataclasses.replace(d.strokes, points_m=move(d.strokes.points_m)),
            )
            for d in segment.drives
        ),
    )
    stations = window_stations(segment.length_m)
    a, b = rasterize_windows(segment, stations), rasterize_windows(moved, stations)
    assert (a == b).mean() > 0.995  # float32 rounding may move a few samples by one pixel
    assert abs(a.sum() - b.sum()) / a.sum() < 0.01


def test_the_raster_never_depends_on_the_label_or_the_true_road() -> None:
    segment = generate_segment(seed=4, index=3, preset="hard")
    other = generate_segment(seed=5, index=9, preset="default")
    blind = dataclasses.replace(
        segment,
        label=Label(True, True, "lane_added", (0.0, 10.0)),
        true_road=other.true_road,
        true_map=other.true_map,
    )
    stations = window_stations(segment.length_m)
    assert np.array_equal(rasterize_windows(segment, stations), rasterize_windows(blind, stations))


def test_every_channel_stays_in_0_1_and_carries_signal() -> None:
    segment = generate_segment(seed=3, index=5, preset="default", change_probability=0.0)
    raster = rasterize_windows(segment, window_stations(segment.length_m))
    assert raster.min() >= 0.0
    assert raster.max() <= 1.0
    for name, channel in CH.items():
        assert raster[:, channel].max() > 0.0, name


def test_a_new_road_follows_the_drives_mean_trajectory() -> None:
    for index in range(60):
        segment = generate_segment(seed=3, index=index, preset="default", change_probability=1.0)
        if segment.label.change_type == "new_road":
            break
    assert segment.current_map.is_empty
    path = reference_path(segment)
    assert path.shape[1] == 2
    raster = rasterize_windows(segment, window_stations(segment.length_m))
    assert raster[:, :4].sum() == 0.0
    centre = raster[:, CH["drive_coverage"], 60:68, 60:68]
    assert (centre.mean(axis=(1, 2)) > 0.3).mean() > 0.8
    true_centre = segment.true_road.reference_m
    distance = np.linalg.norm(path[:, None, :] - true_centre[None, ::4, :], axis=2).min(axis=1)
    assert np.median(distance) < 8.0  # within the road, off its middle by the driven lanes


def test_a_segment_with_neither_map_nor_drives_cannot_be_rasterized() -> None:
    segment = dataclasses.replace(
        generate_segment(seed=3, index=0, preset="default"),
        current_map=RoadMap.empty(),
        drives=(),
    )
    with pytest.raises(InvalidParameterError, match="segment"):
        rasterize_windows(segment, np.array([10.0]))


def test_a_400_m_segment_gets_at_least_24_windows_16_m_apart() -> None:
    stations = window_stations(400.0)
    assert stations.shape[0] >= 24
    assert np.allclose(np.diff(stations), 16.0)
    assert stations[0] >= 0.0
    assert stations[-1] <= 400.0
    assert window_stations(300.0).tolist() == [14.0 + 16.0 * k for k in range(18)]  # centred
    assert window_stations(10.0).tolist() == [5.0]


@pytest.mark.parametrize(("length_m", "stride_m"), [(0.0, 16.0), (-5.0, 16.0), (400.0, 0.0)])
def test_window_stations_refuse_non_positive_lengths(length_m: float, stride_m: float) -> None:
    with pytest.raises(InvalidParameterError):
        window_stations(length_m, stride_m=stride_m)


def test_no_stations_give_an_empty_batch() -> None:
    segment = generate_segment(seed=1, index=0, preset="default")
    assert rasterize_windows(segment, np.array([])).shape == (0, N_CHANNELS, WINDOW_PX, WINDOW_PX)
    assert window_targets(segment, np.array([])).changed.shape == (0,)


def test_stations_must_be_a_finite_1d_array() -> None:
    segment = straight_segment()
    with pytest.raises(InvalidParameterError, match="stations"):
        rasterize_windows(segment, np.array([[1.0, 2.0]]))
    with pytest.raises(InvalidParameterError, match="stations"):
        rasterize_windows(segment, np.array([np.nan]))


def test_window_targets_mark_the_windows_that_overlap_the_change_span() -> None:
    segment = dataclasses.replace(
        straight_segment(), label=Label(True, True, "lane_shift", (100.0, 150.0))
    )
    stations = np.array([50.0, 72.0, 88.0, 120.0, 163.0, 170.0])
    targets = window_targets(segment, stations)
    # window [c - 16, c + 16]: 72 -> [56, 88] misses, 88 -> [72, 104] overlaps 4 m,
    # 163 -> [147, 179] overlaps 3 m (< 4 m), 170 misses
    assert targets.changed.tolist() == [0, 0, 1, 1, 0, 0]
    assert targets.remap.tolist() == [0, 0, 1, 1, 0, 0]
    shift = CHANGE_TYPES.index("lane_shift")
    assert targets.change_type.tolist() == [0, 0, shift, shift, 0, 0]
    assert targets.changed.dtype == np.float32
    assert targets.change_type.dtype == np.int64


def test_window_targets_of_a_marking_change_are_changed_but_not_remap() -> None:
    segment = dataclasses.replace(
        straight_segment(), label=Label(True, False, "marking_deleted", (100.0, 150.0))
    )
    targets = window_targets(segment, np.array([120.0]))
    assert targets.changed.tolist() == [1.0]
    assert targets.remap.tolist() == [0.0]
    assert targets.change_type.tolist() == [CHANGE_TYPES.index("marking_deleted")]


def test_window_targets_of_an_unchanged_segment_are_all_zero() -> None:
    segment = generate_segment(seed=1, index=0, preset="default", change_probability=0.0)
    targets = window_targets(segment, window_stations(segment.length_m))
    assert targets.changed.sum() == targets.remap.sum() == targets.change_type.sum() == 0


def test_every_window_of_a_new_road_is_changed() -> None:
    segment = dataclasses.replace(
        straight_segment(), label=Label(True, True, "new_road", (0.0, 400.0))
    )
    assert window_targets(segment, window_stations(400.0)).changed.all()


def test_densify_keeps_vertices_and_spaces_points_below_a_pixel() -> None:
    polylines = lines(([[0, 0], [1, 0], [1, 0.5]], 0), ([[5, 5], [5, 5.1]], 1))
    points, owner = densify(polylines)
    first = points[owner == 0]
    assert np.allclose(first[0], [0, 0])
    assert np.allclose(first[-1], [1, 0.5])
    assert any(np.allclose(p, [1, 0]) for p in first)
    assert np.linalg.norm(np.diff(first, axis=0), axis=1).max() < RESOLUTION_M
    assert np.allclose(points[owner == 1], [[5, 5], [5, 5.1]])
