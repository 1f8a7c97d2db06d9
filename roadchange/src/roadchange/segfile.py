"""Segment files: one `.npz` per segment, format `roadchange-segment` version 1.

The format is documented in `docs/segment-format.md`: a NumPy `.npz` archive (zip of `.npy`
members, written with `np.savez_compressed`, read with `allow_pickle=False`) whose `header` member
is UTF-8 JSON (format, version, ids, label, drive metadata) and whose other members are plain
numeric arrays with fixed names, dtypes and ranks. Anything unexpected — a truncated archive, a
bad CRC, a missing member, a wrong dtype, inconsistent polyline indices, another format version —
raises `SegmentFileError` naming the file. Nothing is ever unpickled.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from roadchange.drives import LINE_CLASSES, Drive, MarkedRoad, Polylines
from roadchange.errors import SegmentFileError, SegmentTooLargeError
from roadchange.world import CHANGE_TYPES, Label, RoadMap, Segment

FORMAT_NAME = "roadchange-segment"
FORMAT_VERSION = 1
SUFFIX = ".npz"
MAX_MEMBER_BYTES = 16 * 2**20
"""Most bytes one member may inflate to (a segment's largest array is well under 1 MiB)."""
MAX_SEGMENT_BYTES = 64 * 2**20
"""Most bytes a whole file may hold, and all its members together inflate to (a segment is
under 1 MiB inflated); a file is never inflated past it, so reading one file never holds more."""
MAX_MEMBERS = 1024
"""Most members a file may list (a segment has 16 plus 5 per drive)."""
_CHUNK_BYTES = 1 << 20

_Arrays = dict[str, npt.NDArray[Any]]
# name -> (dtype, rank); drive members are "drive.<i>.<name>".
_MAP_MEMBERS = {
    "centreline_m": ("float32", 2),
    "points_m": ("float32", 2),
    "indptr": ("int64", 1),
    "classes": ("int8", 1),
}
_ROAD_MEMBERS = {
    "stations_m": ("float64", 1),
    "reference_m": ("float64", 2),
    "offsets_m": ("float64", 2),
    "kinds": ("int8", 2),
    "painted": ("bool", 2),
    "lane_centres_m": ("float64", 2),
    "lane_counts": ("int8", 1),
}
_XY_MEMBERS = ("points_m", "centreline_m", "trajectory_m", "reference_m")
_DRIVE_MEMBERS = {
    "trajectory_m": ("float32", 2),
    "seen": ("bool", 1),
    "points_m": ("float32", 2),
    "indptr": ("int64", 1),
    "classes": ("int8", 1),
}


def write_segment(path: Path, segment: Segment) -> None:
    """Write `segment` to `path` atomically (a temporary file renamed into place)."""
    arrays: _Arrays = {"header": np.frombuffer(_header_json(segment), np.uint8)}
    arrays |= _map_arrays("current_map", segment.current_map)
    arrays |= _map_arrays("true_map", segment.true_map)
    arrays |= {f"true_road.{name}": getattr(segment.true_road, name) for name in _ROAD_MEMBERS}
    for i, drive in enumerate(segment.drives):
        arrays |= _drive_arrays(i, drive)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


def read_segment(path: Path) -> Segment:
    """Read a segment file; any problem raises `SegmentFileError` naming `path`."""
    path = Path(path)
    arrays = _load_members(path)
    try:
        return _decode(arrays)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise SegmentFileError(path, f"its content is inconsistent ({e})") from e


def _header_json(segment: Segment) -> bytes:
    label = segment.label
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "segment_id": segment.segment_id,
        "preset": segment.preset,
        "seed": segment.seed,
        "index": segment.index,
        "length_m": segment.length_m,
        "line_classes": list(LINE_CLASSES),
        "label": {
            "changed": label.changed,
            "remap": label.remap,
            "change_type": label.change_type,
            "change_span_m": list(label.change_span_m) if label.change_span_m else None,
        },
        "drives": [
            {"drive_id": d.drive_id, "fov_half_width_m": d.fov_half_width_m} for d in segment.drives
        ],
    }
    return json.dumps(header, sort_keys=True).encode()


def _map_arrays(prefix: str, road_map: RoadMap) -> _Arrays:
    lines = road_map.lines
    return {
        f"{prefix}.centreline_m": road_map.centreline_m,
        f"{prefix}.points_m": lines.points_m,
        f"{prefix}.indptr": lines.indptr,
        f"{prefix}.classes": lines.classes,
    }


def _drive_arrays(i: int, drive: Drive) -> _Arrays:
    return {
        f"drive.{i}.trajectory_m": drive.trajectory_m,
        f"drive.{i}.seen": drive.seen,
        f"drive.{i}.points_m": drive.strokes.points_m,
        f"drive.{i}.indptr": drive.strokes.indptr,
        f"drive.{i}.classes": drive.strokes.classes,
    }


def _load_members(path: Path) -> _Arrays:
    """Every member of the archive, each CRC-checked by zipfile before numpy parses it; the
    byte limits are checked on the sizes the archive declares, then again while inflating."""
    data = _read_file(path)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            _check_declared(path, infos)
            budget = _Budget(path)
            return {_member_name(info): _read_member(archive, info, budget) for info in infos}
    except _ARCHIVE_ERRORS as e:
        raise SegmentFileError(
            path, f"it is not a complete {FORMAT_NAME} archive (truncated or corrupted: {e})"
        ) from e


def _read_file(path: Path) -> bytes:
    """The whole file, refused unread when it is larger than `MAX_SEGMENT_BYTES`."""
    try:
        with open(path, "rb") as f:
            size_bytes = os.fstat(f.fileno()).st_size
            if size_bytes <= MAX_SEGMENT_BYTES:
                return f.read(size_bytes)  # a file that grew meanwhile fails its CRC checks
    except OSError as e:
        raise SegmentFileError(path, f"it cannot be opened ({e.strerror or e})") from e
    raise SegmentTooLargeError(path, "the file", size_bytes, "MAX_SEGMENT_BYTES", MAX_SEGMENT_BYTES)


def _check_declared(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    if len(infos) > MAX_MEMBERS:
        raise SegmentFileError(path, f"it lists {len(infos)} members, above {MAX_MEMBERS}")
    for info in infos:
        if info.file_size > MAX_MEMBER_BYTES:
            what = f"member {info.filename!r} (as declared)"
            raise SegmentTooLargeError(
                path, what, info.file_size, "MAX_MEMBER_BYTES", MAX_MEMBER_BYTES
            )
    total = sum(info.file_size for info in infos)
    if total > MAX_SEGMENT_BYTES:
        what = "the members together (as declared)"
        raise SegmentTooLargeError(path, what, total, "MAX_SEGMENT_BYTES", MAX_SEGMENT_BYTES)


class _Budget:
    """What the members inflated so far may still add up to: counted chunk by chunk, so that
    a member that inflates past a limit (whatever its header declared) is refused at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.used_bytes = 0

    def take(self, info: zipfile.ZipInfo, member_bytes: int, chunk_bytes: int) -> None:
        self.used_bytes += chunk_bytes
        if member_bytes > MAX_MEMBER_BYTES:
            what = f"member {info.filename!r}"
            raise SegmentTooLargeError(
                self.path, what, member_bytes, "MAX_MEMBER_BYTES", MAX_MEMBER_BYTES
            )
        if self.used_bytes > MAX_SEGMENT_BYTES:
            what = "the members inflated so far"
            raise SegmentTooLargeError(
                self.path, what, self.used_bytes, "MAX_SEGMENT_BYTES", MAX_SEGMENT_BYTES
            )


_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    NotImplementedError,  # zipfile: unknown compression or zip version (a flipped byte)
    RuntimeError,  # zipfile: "encrypted" flag (a flipped bit)
    MemoryError,
)


def _member_name(info: zipfile.ZipInfo) -> str:
    if not info.filename.endswith(".npy"):
        raise ValueError(f"member {info.filename!r} is not a .npy array")
    return info.filename.removesuffix(".npy")


def _read_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget
) -> npt.NDArray[Any]:
    raw = bytearray()
    with archive.open(info) as member:  # CRC checked at its end: BadZipFile on a mismatch
        while chunk := member.read(_CHUNK_BYTES):
            budget.take(info, len(raw) + len(chunk), len(chunk))
            raw += chunk
    return _npy_array(info, raw)


def _npy_array(info: zipfile.ZipInfo, raw: bytearray) -> npt.NDArray[Any]:
    """The array of a `.npy` member, once its header's shape and dtype account for exactly
    the bytes that follow (numpy would allocate what a header declares before reading)."""
    stream = io.BytesIO(raw)
    version = np.lib.format.read_magic(stream)
    read_header = _NPY_HEADERS.get(version)
    if read_header is None:
        raise ValueError(f"member {info.filename!r} is .npy version {version}")
    shape, _fortran, dtype = read_header(stream)
    expected = math.prod(shape) * dtype.itemsize
    if dtype.hasobject or expected != len(raw) - stream.tell():
        raise ValueError(
            f"member {info.filename!r} declares {dtype}{list(shape)} ({expected} bytes) "
            f"but holds {len(raw) - stream.tell()} bytes"
        )
    stream.seek(0)
    array: npt.NDArray[Any] = np.load(stream, allow_pickle=False)
    return array


_NPY_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _decode(arrays: _Arrays) -> Segment:
    header = _decode_header(arrays)
    _check_members(arrays, len(header["drives"]))
    label = header["label"]
    span = label["change_span_m"]
    return Segment(
        segment_id=str(header["segment_id"]),
        preset=str(header["preset"]),
        seed=int(header["seed"]),
        index=int(header["index"]),
        length_m=float(header["length_m"]),
        current_map=_decode_map(arrays, "current_map"),
        drives=tuple(_decode_drive(arrays, i, d) for i, d in enumerate(header["drives"])),
        label=Label(
            changed=bool(label["changed"]),
            remap=bool(label["remap"]),
            change_type=_change_type(label["change_type"]),
            change_span_m=None if span is None else (float(span[0]), float(span[1])),
        ),
        true_road=_decode_road(arrays),
        true_map=_decode_map(arrays, "true_map"),
    )


def _decode_header(arrays: _Arrays) -> dict[str, Any]:
    raw = arrays.get("header")
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError("the 'header' member is missing or not a uint8 byte string")
    try:
        header = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # deep nesting too
        raise ValueError(f"the header is not UTF-8 JSON: {e!r:.200}") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ValueError(f"the header does not declare format {FORMAT_NAME!r}")
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"format version {header.get('format_version')!r}, this reader reads "
            f"version {FORMAT_VERSION} only"
        )
    if not isinstance(header.get("drives"), list) or not isinstance(header.get("label"), dict):
        raise ValueError("the header lacks its 'drives' list or 'label' object")
    return header


def _change_type(value: object) -> str:
    if value not in CHANGE_TYPES:
        raise ValueError(f"change_type {value!r} is not one of {CHANGE_TYPES}")
    return str(value)


def _check_members(arrays: Mapping[str, npt.NDArray[Any]], n_drives: int) -> None:
    expected: dict[str, tuple[str, int]] = {}
    for prefix in ("current_map", "true_map"):
        expected |= {f"{prefix}.{n}": spec for n, spec in _MAP_MEMBERS.items()}
    expected |= {f"true_road.{n}": spec for n, spec in _ROAD_MEMBERS.items()}
    for i in range(n_drives):
        expected |= {f"drive.{i}.{n}": spec for n, spec in _DRIVE_MEMBERS.items()}
    for name, (dtype, rank) in expected.items():
        if name not in arrays:
            raise ValueError(f"member {name!r} is missing")
        array = arrays[name]
        if array.dtype != np.dtype(dtype) or array.ndim != rank:
            raise ValueError(
                f"member {name!r} is {array.dtype}[{array.ndim}d], expected {dtype}[{rank}d]"
            )
        if name.endswith(_XY_MEMBERS) and array.shape[1] != 2:
            raise ValueError(f"member {name!r} has shape {array.shape}, expected (N, 2)")


def _polylines(arrays: _Arrays, prefix: str) -> Polylines:
    points, indptr, classes = (arrays[f"{prefix}.{n}"] for n in ("points_m", "indptr", "classes"))
    ok = (
        indptr.shape[0] == classes.shape[0] + 1
        and indptr[0] == 0
        and indptr[-1] == points.shape[0]
        and bool((np.diff(indptr) >= 0).all())
        and bool(((classes >= 0) & (classes < len(LINE_CLASSES))).all())
    )
    if not ok:
        raise ValueError(f"polylines {prefix!r} have inconsistent indptr/classes")
    return Polylines(points, indptr, classes)


def _decode_road(arrays: _Arrays) -> MarkedRoad:
    road = MarkedRoad(**{n: arrays[f"true_road.{n}"] for n in _ROAD_MEMBERS})
    n_stations = road.stations_m.shape[0]
    shapes_ok = (
        n_stations >= 2
        and road.reference_m.shape[0] == n_stations
        and road.lane_counts.shape[0] == n_stations
        and road.offsets_m.shape == road.kinds.shape == road.painted.shape
        and road.offsets_m.shape[1] == road.lane_centres_m.shape[1] == n_stations
    )
    if not shapes_ok:
        raise ValueError("true_road arrays disagree on the number of stations or lines")
    return road


def _decode_map(arrays: _Arrays, prefix: str) -> RoadMap:
    return RoadMap(arrays[f"{prefix}.centreline_m"], _polylines(arrays, prefix))


def _decode_drive(arrays: _Arrays, i: int, meta: Mapping[str, Any]) -> Drive:
    trajectory, seen = arrays[f"drive.{i}.trajectory_m"], arrays[f"drive.{i}.seen"]
    if trajectory.shape[0] != seen.shape[0]:
        raise ValueError(f"drive {i}: trajectory and seen differ in length")
    return Drive(
        drive_id=int(meta["drive_id"]),
        fov_half_width_m=float(meta["fov_half_width_m"]),
        trajectory_m=trajectory,
        seen=seen,
        strokes=_polylines(arrays, f"drive.{i}"),
    )
