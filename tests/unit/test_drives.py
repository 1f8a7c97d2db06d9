"""The sensor model: drives observe the true road, with exactly the imperfections configured."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from roadchange.drives import (
    CLASS_DASHED,
    CLASS_EDGE,
    CLASS_SOLID,
    MarkedRoad,
    Polylines,
    SensorModel,
    simulate_drives,
)
from roadchange.errors import InvalidParameterError
from roadchange.world import Segment, generate_segment, get_preset

PERFECT = SensorModel(
    drives_min=4,
    drives_max=4,
    gps_sigma_m=0.0,
    yaw_sigma_deg=0.0,
    point_noise_m=0.0,
    trajectory_noise_m=0.0,
    lateral_wander_m=0.0,
    dropout_probability=0.0,
    dropout_piece_m=8.0,
    occlusions_per_km=0.0,
    occlusion_length_m=(10.0, 20.0),
    confusion_probability=0.0,
    false_positives_per_km=0.0,
    false_positive_length_m=(2.0, 10.0),
    fov_half_width_m=100.0,
)


def road(seed: int = 1, index: int = 2) -> MarkedRoad:
    return generate_segment(seed=seed, index=index, preset="default").true_road


def painted_points(road: MarkedRoad) -> tuple[np.ndarray, np.ndarray]:
    """World position and class of every painted (line, station) sample of the true road."""
    rows, stations = np.nonzero(road.painted)
    normals = road.left_normals()
    xy = road.reference_m[stations] + road.offsets_m[rows, stations][:, None] * normals[stations]
    return xy, road.kinds[rows, stations]


def nearest(points: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance to and index of the nearest target of each point (chunked brute force)."""
    distance, index = [], []
    for chunk in np.array_split(points, max(1, points.shape[0] // 500)):
        d = np.linalg.norm(chunk[:, None, :] - targets[None, :, :], axis=2)
        index.append(d.argmin(axis=1))
        distance.append(d.min(axis=1))
    return np.concatenate(distance), np.concatenate(index)


def test_a_perfect_sensor_reports_the_painted_lines_exactly_with_their_classes() -> None:
    true_road = road()
    drives = simulate_drives(true_road, PERFECT, np.random.default_rng(0))
    targets, target_class = painted_points(true_road)
    for drive in drives:
        distance, index = nearest(drive.strokes.points_m.astype(np.float64), targets)
        assert distance.max() < 1e-3
        owner = np.repeat(drive.strokes.classes, np.diff(drive.strokes.indptr))
        assert np.array_equal(owner, target_class[index])


def test_a_perfect_sensor_sees_every_painted_line_over_the_whole_segment() -> None:
    true_road = road()
    drive = simulate_drives(true_road, PERFECT, np.random.default_rng(0))[0]
    targets, _ = painted_points(true_road)
    distance, _ = nearest(targets[::7], drive.strokes.points_m.astype(np.float64))
    assert distance.max() < 2.1  # vertices every 2 m along the road
    assert drive.seen.all()


def test_dashed_strokes_are_single_dashes_about_3_m_long() -> None:
    drive = simulate_drives(road(1, 1), PERFECT, np.random.default_rng(0))[0]
    lengths = [
        np.linalg.norm(np.diff(drive.strokes.polyline(i), axis=0), axis=1).sum()
        for i in range(len(drive.strokes))
        if drive.strokes.classes[i] == CLASS_DASHED
    ]
    assert lengths
    assert np.median(lengths) == pytest.approx(2.75, abs=0.3)  # sampled every 0.5 m


def test_a_gps_offset_moves_a_whole_drive_by_one_vector() -> None:
    true_road = road()
    sensors = dataclasses.replace(PERFECT, drives_min=1, drives_max=1, gps_sigma_m=0.5)
    noisy = simulate_drives(true_road, sensors, np.random.default_rng(3))[0]
    exact = simulate_drives(true_road, PERFECT, np.random.default_rng(3))[0]
    offset = noisy.trajectory_m - exact.trajectory_m
    assert np.allclose(offset, offset[0], atol=1e-4)
    assert np.linalg.norm(offset[0]) > 0.01
    strokes_offset = noisy.strokes.points_m - exact.strokes.points_m
    assert np.allclose(strokes_offset, offset[0], atol=1e-3)


def test_occluded_stretches_report_nothing_and_are_flagged_in_the_trajectory() -> None:
    true_road = road()
    sensors = dataclasses.replace(PERFECT, occlusions_per_km=10.0, occlusion_length_m=(30, 40))
    for drive in simulate_drives(true_road, sensors, np.random.default_rng(1)):
        assert not drive.seen.all()
        hidden = drive.trajectory_m[~drive.seen].astype(np.float64)
        distance, _ = nearest(hidden, drive.strokes.points_m.astype(np.float64))
        assert distance.min() > 0.9  # no observation next to an occluded pose


def test_the_field_of_view_limits_how_far_sideways_a_drive_sees() -> None:
    true_road = road(1, 4)
    sensors = dataclasses.replace(PERFECT, fov_half_width_m=2.5)
    for drive in simulate_drives(true_road, sensors, np.random.default_rng(2)):
        distance, _ = nearest(
            drive.strokes.points_m.astype(np.float64), drive.trajectory_m.astype(np.float64)
        )
        assert distance.max() <= np.hypot(2.5, 0.5) + 1e-3


def test_dropout_confusion_and_false_positives_happen_at_their_rates() -> None:
    true_road = road()
    targets, target_class = painted_points(true_road)
    sensors = dataclasses.replace(
        PERFECT, confusion_probability=0.3, false_positives_per_km=40.0, dropout_probability=0.3
    )
    drives = simulate_drives(true_road, sensors, np.random.default_rng(4))
    points = np.concatenate([d.strokes.points_m for d in drives]).astype(np.float64)
    classes = np.concatenate(
        [np.repeat(d.strokes.classes, np.diff(d.strokes.indptr)) for d in drives]
    )
    distance, index = nearest(points, targets)
    on_road = distance < 1e-3
    assert (~on_road).sum() > 10  # false positives
    painted = classes[on_road] <= CLASS_DASHED
    confused = classes[on_road][painted] != target_class[index[on_road]][painted]
    assert 0.1 < confused.mean() < 0.5
    perfect = simulate_drives(true_road, PERFECT, np.random.default_rng(4))
    seen_fraction = on_road.sum() / sum(d.strokes.points_m.shape[0] for d in perfect)
    assert 0.55 < seen_fraction < 0.85
    assert (classes[on_road] == CLASS_EDGE).any()
    assert (classes[on_road] == CLASS_SOLID).any()


def test_per_point_noise_has_the_configured_spread() -> None:
    true_road = road()
    sensors = dataclasses.replace(PERFECT, point_noise_m=0.1)
    drive = simulate_drives(true_road, sensors, np.random.default_rng(5))[0]
    targets, _ = painted_points(true_road)
    distance, _ = nearest(drive.strokes.points_m.astype(np.float64), targets)
    # the nearest true sample is the noiseless vertex itself: a 2-d Rayleigh, mean sigma sqrt(pi/2)
    assert np.mean(distance) == pytest.approx(0.1 * np.sqrt(np.pi / 2), rel=0.1)


@pytest.mark.parametrize("preset", ["default", "hard"])
def test_drive_counts_follow_the_preset(preset: str) -> None:
    sensors = get_preset(preset).sensors
    counts = {len(generate_segment(seed=4, index=i, preset=preset).drives) for i in range(40)}
    assert min(counts) >= sensors.drives_min
    assert max(counts) <= sensors.drives_max
    assert len(counts) > 1


def test_hard_drives_are_noisier_than_default_drives() -> None:
    def mean_error_m(preset: str) -> float:
        errors = []
        for index in range(8):
            segment: Segment = generate_segment(
                seed=6, index=index, preset=preset, change_probability=0.0
            )
            targets, _ = painted_points(segment.true_road)
            for drive in segment.drives[:4]:
                points = drive.strokes.points_m[::5].astype(np.float64)
                errors.append(np.median(nearest(points, targets)[0]))
        return float(np.mean(errors))

    assert mean_error_m("hard") > 1.5 * mean_error_m("default")


def test_a_sensor_model_with_an_impossible_range_is_refused() -> None:
    with pytest.raises(InvalidParameterError, match="drives_min"):
        dataclasses.replace(PERFECT, drives_min=5, drives_max=2)
    with pytest.raises(InvalidParameterError, match="dropout_probability"):
        dataclasses.replace(PERFECT, dropout_probability=1.5)
    with pytest.raises(InvalidParameterError, match="gps_sigma_m"):
        dataclasses.replace(PERFECT, gps_sigma_m=-0.1)
    with pytest.raises(InvalidParameterError, match="fov_half_width_m"):
        dataclasses.replace(PERFECT, fov_half_width_m=0.0)
    with pytest.raises(InvalidParameterError, match="occlusion_length_m"):
        dataclasses.replace(PERFECT, occlusion_length_m=(20.0, 10.0))


def test_polylines_concatenate_keeps_each_polyline_and_its_class() -> None:
    a = Polylines(np.zeros((3, 2), np.float32), np.array([0, 3]), np.array([0], np.int8))
    b = Polylines(np.ones((5, 2), np.float32), np.array([0, 2, 5]), np.array([1, 2], np.int8))
    both = Polylines.concatenate([a, b, Polylines.empty()])
    assert len(both) == 3
    assert both.indptr.tolist() == [0, 3, 5, 8]
    assert both.classes.tolist() == [0, 1, 2]
    assert np.array_equal(both.polyline(2), np.ones((3, 2)))
