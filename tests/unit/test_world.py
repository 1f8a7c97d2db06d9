"""The synthetic world: determinism, presets, and every change type generated and labelled."""

from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
import pytest

from roadchange.drives import CLASS_CENTRELINE, CLASS_DASHED, CLASS_SOLID, KIND_ABSENT
from roadchange.errors import InvalidParameterError
from roadchange.world import (
    CHANGE_TYPES,
    PRESETS,
    STRUCTURAL_CHANGES,
    Segment,
    generate_segment,
    get_preset,
)

CHANGES = CHANGE_TYPES[1:]


@cache
def first_segment_of_type(change_type: str, preset: str = "default") -> Segment:
    for index in range(400):
        segment = generate_segment(seed=11, index=index, preset=preset, change_probability=1.0)
        if segment.label.change_type == change_type:
            return segment
    raise AssertionError(f"no {change_type} segment in 400 tries")


def station_index(segment: Segment, station_m: float) -> int:
    return round(station_m / segment.true_road.station_step_m)


def mid_span(segment: Segment) -> int:
    assert segment.label.change_span_m is not None
    start, end = segment.label.change_span_m
    return station_index(segment, (start + end) / 2)


def outside_span(segment: Segment) -> int:
    """A station at least 5 m away from the change span."""
    assert segment.label.change_span_m is not None
    start, end = segment.label.change_span_m
    station = start / 2 if start > 10 else (end + segment.length_m) / 2
    return station_index(segment, station)


def map_lane_count(segment: Segment) -> int:
    """Lanes of the current map: one centreline polyline per lane (the map has no change)."""
    return int((segment.current_map.lines.classes == CLASS_CENTRELINE).sum())


def test_same_seed_and_index_give_identical_segments() -> None:
    a = generate_segment(seed=3, index=17, preset="default")
    b = generate_segment(seed=3, index=17, preset="default")
    assert a.same_as(b)
    assert a.segment_id == "default-3-000017"


@pytest.mark.parametrize(("seed", "index"), [(3, 18), (4, 17)])
def test_a_different_seed_or_index_gives_a_different_segment(seed: int, index: int) -> None:
    a = generate_segment(seed=3, index=17, preset="default")
    b = generate_segment(seed=seed, index=index, preset="default")
    assert not a.same_as(b)
    assert not np.array_equal(a.drives[0].trajectory_m, b.drives[0].trajectory_m)


def test_generation_does_not_touch_numpy_global_random_state() -> None:
    np.random.seed(5)
    expected = np.random.random()
    np.random.seed(5)
    generate_segment(seed=1, index=0, preset="hard")
    assert np.random.random() == expected


def test_segments_are_300_to_500_m_with_1_to_4_lanes_of_3_to_3_8_m() -> None:
    for index in range(30):
        segment = generate_segment(seed=2, index=index, preset="default", change_probability=0.0)
        assert 300.0 <= segment.length_m <= 500.0
        assert 1 <= map_lane_count(segment) <= 4
        road = segment.true_road
        lane_lines = road.offsets_m[1 : map_lane_count(segment) + 2, 0]
        assert np.all((-np.diff(lane_lines) >= 3.0 - 1e-9) & (-np.diff(lane_lines) <= 3.8 + 1e-9))


def test_centreline_curvature_stays_below_the_preset_maximum() -> None:
    segment = generate_segment(seed=2, index=1, preset="default")
    xy = segment.true_road.reference_m
    heading = np.unwrap(np.arctan2(np.diff(xy[:, 1]), np.diff(xy[:, 0])))
    curvature = np.diff(heading) / segment.true_road.station_step_m
    assert np.abs(curvature).max() <= get_preset("default").max_curvature_per_m * 1.01
    assert np.abs(curvature).max() > 0.0


def test_outer_lines_are_solid_and_inner_lines_dashed_with_3_m_dashes() -> None:
    segment = generate_segment(seed=2, index=3, preset="default", change_probability=0.0)
    lanes = map_lane_count(segment)
    kinds = segment.true_road.kinds[:, 0]
    assert kinds[1] == kinds[lanes + 1] == CLASS_SOLID
    assert all(kinds[r] == CLASS_DASHED for r in range(2, lanes + 1))
    if lanes > 1:
        painted = segment.true_road.painted[2]
        step = segment.true_road.station_step_m
        assert painted.mean() == pytest.approx(3.0 / 12.0, abs=0.02)
        runs = np.diff(np.flatnonzero(np.diff(painted.astype(np.int8)) != 0))
        assert set(np.round(runs * step).astype(int)) <= {3, 9}


def test_change_probability_zero_and_one_are_respected() -> None:
    for index in range(20):
        assert not generate_segment(
            seed=9, index=index, preset="default", change_probability=0.0
        ).label.changed
        assert generate_segment(
            seed=9, index=index, preset="default", change_probability=1.0
        ).label.changed


def test_about_half_of_the_segments_change_by_default() -> None:
    changed = [generate_segment(seed=8, index=i, preset="hard").label.changed for i in range(200)]
    assert 0.4 <= np.mean(changed) <= 0.6


def test_every_change_type_is_generated() -> None:
    types = {
        generate_segment(seed=7, index=i, preset="default").label.change_type for i in range(150)
    }
    assert types == set(CHANGE_TYPES)


@pytest.mark.parametrize("change_type", CHANGES)
def test_each_change_has_its_remap_flag_and_a_local_span(change_type: str) -> None:
    segment = first_segment_of_type(change_type)
    label = segment.label
    assert label.changed
    assert label.remap == (change_type in STRUCTURAL_CHANGES)
    assert label.change_span_m is not None
    start, end = label.change_span_m
    if change_type == "new_road":
        assert (start, end) == (0.0, segment.length_m)
    else:
        assert 0.0 < start < end < segment.length_m
        assert 40.0 <= end - start <= 150.0


def test_an_unchanged_segment_has_no_span_and_its_map_is_the_true_road() -> None:
    segment = generate_segment(seed=5, index=0, preset="default", change_probability=0.0)
    assert segment.label == dataclasses.replace(segment.label, changed=False, remap=False)
    assert segment.label.change_type == "none"
    assert segment.label.change_span_m is None
    assert segment.current_map.same_as(segment.true_map)


def test_lane_added_gives_the_true_road_one_more_lane_inside_the_span_only() -> None:
    segment = first_segment_of_type("lane_added")
    lanes = map_lane_count(segment)
    counts = segment.true_road.lane_counts
    assert counts[mid_span(segment)] == lanes + 1
    assert counts[outside_span(segment)] == lanes
    true_centrelines = (segment.true_map.lines.classes == CLASS_CENTRELINE).sum()
    assert true_centrelines == lanes + 1


def test_lane_removed_gives_the_true_road_one_lane_less_inside_the_span_only() -> None:
    segment = first_segment_of_type("lane_removed")
    lanes = map_lane_count(segment)
    assert lanes >= 2
    assert segment.true_road.lane_counts[mid_span(segment)] == lanes - 1
    assert segment.true_road.lane_counts[outside_span(segment)] == lanes


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_lane_shift_moves_every_line_by_0_5_to_2_m_inside_the_span(preset: str) -> None:
    segment = first_segment_of_type("lane_shift", preset)
    offsets = segment.true_road.offsets_m
    shift = offsets[:, mid_span(segment)] - offsets[:, outside_span(segment)]
    low, high = get_preset(preset).shift_m
    assert np.allclose(shift, shift[0])
    assert 0.5 <= low <= abs(shift[0]) <= high <= 2.0
    assert segment.true_road.lane_counts[mid_span(segment)] == map_lane_count(segment)


def test_the_map_and_true_lines_differ_by_the_shift_in_world_coordinates() -> None:
    segment = first_segment_of_type("lane_shift")
    k = mid_span(segment)
    shift = segment.true_road.offsets_m[1, k] - segment.true_road.offsets_m[1, 0]
    true_point = segment.true_map.lines.polyline(0)  # left edge of the true road
    map_point = segment.current_map.lines.polyline(0)
    nearest = np.min(np.linalg.norm(map_point[:, None, :] - true_point[None, k // 2, :], axis=2))
    assert nearest == pytest.approx(abs(shift), abs=0.05)


def test_marking_type_changed_flips_one_line_between_solid_and_dashed_in_the_span() -> None:
    segment = first_segment_of_type("marking_type_changed")
    kinds = segment.true_road.kinds
    inside, outside = kinds[:, mid_span(segment)], kinds[:, outside_span(segment)]
    changed_rows = np.flatnonzero(inside != outside)
    assert changed_rows.shape[0] == 1
    row = changed_rows[0]
    assert {int(inside[row]), int(outside[row])} == {CLASS_SOLID, CLASS_DASHED}
    assert segment.true_road.lane_counts[mid_span(segment)] == map_lane_count(segment)


def test_marking_deleted_removes_the_paint_of_one_line_in_the_span() -> None:
    segment = first_segment_of_type("marking_deleted")
    kinds = segment.true_road.kinds
    inside, outside = kinds[:, mid_span(segment)], kinds[:, outside_span(segment)]
    changed_rows = np.flatnonzero(inside != outside)
    assert changed_rows.shape[0] == 1
    assert inside[changed_rows[0]] == KIND_ABSENT
    assert not segment.true_road.painted[changed_rows[0], mid_span(segment)]
    assert segment.true_road.lane_counts[mid_span(segment)] == map_lane_count(segment)


def test_new_road_has_an_empty_current_map_and_drives_over_a_real_road() -> None:
    segment = first_segment_of_type("new_road")
    assert segment.current_map.is_empty
    assert len(segment.current_map.lines) == 0
    assert not segment.true_map.is_empty
    assert all(len(d.strokes) > 0 for d in segment.drives)


def test_hard_preset_is_harder_on_every_axis() -> None:
    default, hard = get_preset("default").sensors, get_preset("hard").sensors
    assert hard.gps_sigma_m > default.gps_sigma_m
    assert hard.yaw_sigma_deg > default.yaw_sigma_deg
    assert hard.drives_max < default.drives_max
    assert hard.occlusions_per_km > default.occlusions_per_km
    assert hard.dropout_probability > default.dropout_probability
    assert hard.confusion_probability > default.confusion_probability
    assert hard.false_positives_per_km > default.false_positives_per_km
    assert hard.fov_half_width_m < default.fov_half_width_m
    assert get_preset("hard").shift_m[1] < get_preset("default").shift_m[1]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"seed": -1, "index": 0, "preset": "default"}, "seed"),
        ({"seed": 0, "index": -3, "preset": "default"}, "index"),
        ({"seed": 0, "index": 0, "preset": "easy"}, "preset"),
        ({"seed": 0, "index": 0, "preset": "default", "change_probability": 1.5}, "change_prob"),
    ],
)
def test_bad_arguments_raise_a_typed_error_naming_the_parameter(
    kwargs: dict[str, object], name: str
) -> None:
    with pytest.raises(InvalidParameterError, match=name):
        generate_segment(**kwargs)  # type: ignore[arg-type]


def test_a_preset_object_can_be_passed_instead_of_a_name() -> None:
    custom = dataclasses.replace(get_preset("default"), name="two-lane", lanes=(2, 2))
    for index in range(20):
        segment = generate_segment(seed=1, index=index, preset=custom)
        assert segment.preset == "two-lane"
        assert segment.segment_id.startswith("two-lane-1-")
        assert map_lane_count(segment) == 2 or segment.label.change_type == "new_road"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lanes", (1, 1)),
        ("lanes", (4, 4)),
        ("lanes", (3, 2)),
        ("length_m", (50.0, 80.0)),
        ("shift_m", (2.0, 0.5)),
        ("taper_m", 0.0),
    ],
)
def test_a_preset_with_an_unusable_range_is_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidParameterError, match=field):
        dataclasses.replace(get_preset("default"), **{field: value})
