"""Segment files: exact round trip, and every damaged file refused with the file's name."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from roadchange.drives import Drive, MarkedRoad, Polylines
from roadchange.errors import SegmentFileError
from roadchange.generate import generate_dataset
from roadchange.segfile import FORMAT_VERSION, read_segment, write_segment
from roadchange.world import Label, RoadMap, Segment, generate_segment


def tiny_segment() -> Segment:
    """A hand-made two-drive segment small enough to corrupt byte by byte."""
    stations = np.arange(3, dtype=np.float64)
    reference = np.stack([stations, np.zeros(3)], axis=1)
    lines = Polylines(
        np.array([[0, 1], [2, 1], [0, -1], [2, -1]], np.float32),
        np.array([0, 2, 4]),
        np.array([0, 2], np.int8),
    )
    road = MarkedRoad(
        stations_m=stations,
        reference_m=reference,
        offsets_m=np.array([[1.0] * 3, [-1.0] * 3]),
        kinds=np.array([[0] * 3, [2] * 3], np.int8),
        painted=np.ones((2, 3), bool),
        lane_centres_m=np.zeros((1, 3)),
        lane_counts=np.ones(3, np.int8),
    )
    drive = Drive(
        drive_id=0,
        fov_half_width_m=5.0,
        trajectory_m=reference.astype(np.float32),
        seen=np.array([True, False, True]),
        strokes=lines,
    )
    road_map = RoadMap(reference.astype(np.float32), lines)
    return Segment(
        segment_id="tiny",
        preset="default",
        seed=0,
        index=0,
        length_m=2.0,
        current_map=road_map,
        drives=(drive, drive),
        label=Label(True, False, "marking_deleted", (0.5, 1.5)),
        true_road=road,
        true_map=road_map,
    )


@pytest.mark.parametrize("change_probability", [0.0, 1.0])
def test_a_written_segment_reads_back_identical(tmp_path: Path, change_probability: float) -> None:
    for index in range(4):
        segment = generate_segment(
            seed=1, index=index, preset="hard", change_probability=change_probability
        )
        path = tmp_path / f"{index}.npz"
        write_segment(path, segment)
        back = read_segment(path)
        assert back.same_as(segment)
        assert back.label == segment.label
        assert back.drives[0].strokes.points_m.dtype == np.float32


def test_a_new_road_segment_with_its_empty_map_round_trips(tmp_path: Path) -> None:
    for index in range(60):
        segment = generate_segment(seed=1, index=index, preset="default", change_probability=1.0)
        if segment.label.change_type == "new_road":
            break
    assert segment.current_map.is_empty
    write_segment(tmp_path / "new.npz", segment)
    assert read_segment(tmp_path / "new.npz").same_as(segment)


def test_writing_leaves_no_temporary_file_behind(tmp_path: Path) -> None:
    write_segment(tmp_path / "a.npz", tiny_segment())
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]


def test_the_file_is_a_plain_npz_with_a_json_header_and_no_object_arrays(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    write_segment(path, generate_segment(seed=2, index=0, preset="default"))
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(npz["header"].tobytes())
        assert header["format"] == "roadchange-segment"
        assert header["format_version"] == FORMAT_VERSION
        assert header["segment_id"] == "default-2-000000"
        assert all(npz[name].dtype != object for name in npz.files)


def test_a_truncated_file_raises_segment_file_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.npz"
    write_segment(path, generate_segment(seed=1, index=0, preset="default"))
    data = path.read_bytes()
    for keep in (0, 10, len(data) // 2, len(data) - 30):
        path.write_bytes(data[:keep])
        with pytest.raises(SegmentFileError, match=r"cut\.npz") as info:
            read_segment(path)
        assert info.value.path == path


def test_a_corrupted_file_raises_segment_file_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    write_segment(path, generate_segment(seed=1, index=0, preset="default"))
    data = bytearray(path.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(SegmentFileError, match=r"bad\.npz.*(truncated or corrupted)"):
        read_segment(path)


def test_every_single_byte_corruption_is_refused_or_harmless(tmp_path: Path) -> None:
    original = tiny_segment()
    path = tmp_path / "tiny.npz"
    write_segment(path, original)
    data = path.read_bytes()
    refused, positions = 0, range(0, len(data), 7)  # every 7th byte: all header fields get hit
    for position in positions:
        damaged = bytearray(data)
        damaged[position] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            back = read_segment(path)
        except SegmentFileError as e:
            message = str(e)
            refused += 1
        else:
            message = "tiny.npz"
            assert back.same_as(original), f"byte {position} changed the content silently"
        assert "tiny.npz" in message
    assert refused > len(positions) // 2


def test_a_missing_file_raises_segment_file_error(tmp_path: Path) -> None:
    with pytest.raises(SegmentFileError, match=r"absent\.npz"):
        read_segment(tmp_path / "absent.npz")


def rewrite(path: Path, change: dict[str, np.ndarray | None]) -> None:
    """Rewrite the archive at `path` with members replaced (None: removed)."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    for name, value in change.items():
        if value is None:
            arrays.pop(name)
        else:
            arrays[name] = value
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    path.write_bytes(buffer.getvalue())


def header_with(path: Path, **fields: object) -> np.ndarray:
    with np.load(path, allow_pickle=False) as npz:
        header = json.loads(npz["header"].tobytes())
    header.update(fields)
    return np.frombuffer(json.dumps(header).encode(), np.uint8)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("version", "format version 99"),
        ("format", "does not declare format"),
        ("missing", "'drive.1.seen' is missing"),
        ("dtype", "drive.0.points_m' is float64"),
        ("indptr", "inconsistent indptr"),
        ("change_type", "change_type 'potholes'"),
        ("pickle", "truncated or corrupted"),
        ("json", "not UTF-8 JSON"),
        ("span", "inconsistent"),
        ("drive_meta", "inconsistent"),
    ],
)
def test_a_well_formed_archive_with_wrong_content_is_refused(
    tmp_path: Path, damage: str, message: str
) -> None:
    path = tmp_path / "wrong.npz"
    write_segment(path, tiny_segment())
    changes: dict[str, dict[str, np.ndarray | None]] = {
        "version": {"header": header_with(path, format_version=99)},
        "format": {"header": header_with(path, format="something-else")},
        "missing": {"drive.1.seen": None},
        "dtype": {"drive.0.points_m": np.zeros((4, 2))},
        "indptr": {"drive.0.indptr": np.array([0, 3, 9])},
        "change_type": {
            "header": header_with(
                path,
                label={
                    "changed": True,
                    "remap": False,
                    "change_type": "potholes",
                    "change_span_m": None,
                },
            )
        },
        "json": {"header": np.frombuffer(b"{not json", np.uint8)},
        "span": {
            "header": header_with(
                path,
                label={
                    "changed": True,
                    "remap": False,
                    "change_type": "marking_deleted",
                    "change_span_m": [3.0],
                },
            )
        },
        "drive_meta": {"header": header_with(path, drives=[{"drive_id": 0}, {"drive_id": 1}])},
    }
    if damage == "pickle":
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        arrays["drive.0.seen"] = np.array([{"x": 1}], dtype=object)
        with zipfile.ZipFile(path, "w") as archive:
            for name, value in arrays.items():
                buffer = io.BytesIO()
                np.save(buffer, value, allow_pickle=True)
                archive.writestr(f"{name}.npy", buffer.getvalue())
    else:
        rewrite(path, changes[damage])
    with pytest.raises(SegmentFileError, match=r"wrong\.npz") as info:
        read_segment(path)
    assert message in str(info.value)


def test_generate_dataset_writes_one_readable_file_per_segment(tmp_path: Path) -> None:
    progress: list[int] = []
    paths = generate_dataset(
        tmp_path / "data", preset="default", segments=3, seed=5, on_progress=progress.append
    )
    assert progress == [1, 2, 3]
    assert [p.name for p in paths] == [f"default-5-00000{i}.npz" for i in range(3)]
    for index, path in enumerate(paths):
        expected = generate_segment(seed=5, index=index, preset="default")
        assert read_segment(path).same_as(expected)


def test_generate_dataset_refuses_zero_segments_and_unknown_presets(tmp_path: Path) -> None:
    from roadchange.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="segments"):
        generate_dataset(tmp_path, preset="default", segments=0, seed=1)
    with pytest.raises(InvalidParameterError, match="preset"):
        generate_dataset(tmp_path, preset="medium", segments=1, seed=1)
