"""Decompression bombs and other oversized segment files: refused with `SegmentTooLargeError`
naming the limit (or `SegmentFileError`), while the reader's peak memory stays far below what
the file would inflate to. The bombs are written by hand (one deflated member reused), so a
1.2 MB file that inflates to 1.2 GB costs a few milliseconds to make."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from roadchange.errors import SegmentFileError, SegmentTooLargeError
from roadchange.segfile import (
    MAX_MEMBER_BYTES,
    MAX_MEMBERS,
    MAX_SEGMENT_BYTES,
    read_segment,
    write_segment,
)
from roadchange.world import generate_segment

PEAK_BOUND_BYTES = 24 * 2**20  # generous: refusing a bomb needs about the file's size


def npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return header.getvalue()


def deflated_zeros(prefix: bytes, zero_bytes: int) -> tuple[bytes, int, int]:
    """(raw deflate stream, CRC-32, size) of `prefix` followed by `zero_bytes` zeros."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    parts, crc, left = [compressor.compress(prefix)], zlib.crc32(prefix), zero_bytes
    while left:
        piece = chunk[: min(left, len(chunk))]
        parts.append(compressor.compress(piece))
        crc, left = zlib.crc32(piece, crc), left - len(piece)
    parts.append(compressor.flush())
    return b"".join(parts), crc, len(prefix) + zero_bytes


def write_zip(path: Path, members: list[tuple[str, bytes, int, int]]) -> None:
    """A zip of deflated members given as (name, deflated data, CRC-32, declared size)."""
    out, central = io.BytesIO(), io.BytesIO()
    for name, data, crc, size in members:
        offset, encoded = out.tell(), name.encode()
        fields = (20, 0, 8, 0, 0x21, crc, len(data), size, len(encoded), 0)
        out.write(struct.pack("<I5H3I2H", 0x04034B50, *fields) + encoded + data)
        central.write(
            struct.pack("<I6H3I5H2I", 0x02014B50, 20, *fields, 0, 0, 0, 0, offset) + encoded
        )
    directory_at, directory = out.tell(), central.getvalue()
    count = len(members)
    end = struct.pack("<I4H2IH", 0x06054B50, 0, 0, count, count, len(directory), directory_at, 0)
    path.write_bytes(out.getvalue() + directory + end)


def bomb(path: Path, *, members: int, member_bytes: int, declared: int | None = None) -> None:
    """`members` arrays of `member_bytes` zeros each (declared as `declared` bytes, if given)."""
    header = npy_header((member_bytes - len(npy_header((member_bytes,))),))
    data, crc, size = deflated_zeros(header, member_bytes - len(header))
    write_zip(
        path,
        [(f"drive.{i}.points_m.npy", data, crc, declared or size) for i in range(members)],
    )


def peak_bytes_of(action: Callable[[], object]) -> tuple[BaseException | None, int]:
    tracemalloc.start()
    try:
        action()
    except Exception as exc:  # the caller checks which
        return exc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return None, 0


def test_the_probe_bomb_is_refused_naming_the_total_limit_with_bounded_memory(
    tmp_path: Path,
) -> None:
    """80 members of 15 MiB each (each under the per-member limit): a 1.2 MB file, 1.2 GB
    inflated, as the probe sent."""
    path = tmp_path / "bomb.npz"
    bomb(path, members=80, member_bytes=15 * 2**20)
    assert path.stat().st_size < 2 * 2**20
    error, peak = peak_bytes_of(lambda: read_segment(path))
    assert isinstance(error, SegmentTooLargeError), error
    assert error.limit_name == "MAX_SEGMENT_BYTES"
    assert error.limit_bytes == MAX_SEGMENT_BYTES
    assert "bomb.npz" in str(error)
    assert "MAX_SEGMENT_BYTES" in str(error)
    assert peak < PEAK_BOUND_BYTES, f"peak {peak / 2**20:.1f} MiB while refusing"


@pytest.mark.parametrize(
    ("members", "member_bytes", "declared", "limit_name"),
    [
        (5, 15 * 2**20, None, "MAX_SEGMENT_BYTES"),  # just above the total: 75 MiB
        (1, MAX_MEMBER_BYTES + 1, None, "MAX_MEMBER_BYTES"),  # one member just above its limit
        (1, 2**20, 2**30, "MAX_MEMBER_BYTES"),  # one member declaring 1 GiB
        (100, 2**10, 2**20, "MAX_SEGMENT_BYTES"),  # members declaring 1 MiB each
    ],
)
def test_bombs_around_the_limits_are_refused_before_inflating(
    tmp_path: Path, members: int, member_bytes: int, declared: int | None, limit_name: str
) -> None:
    path = tmp_path / "bomb.npz"
    bomb(path, members=members, member_bytes=member_bytes, declared=declared)
    error, peak = peak_bytes_of(lambda: read_segment(path))
    assert isinstance(error, SegmentTooLargeError), error
    assert error.limit_name == limit_name
    assert peak < PEAK_BOUND_BYTES


def test_members_that_inflate_past_their_declared_size_are_refused_with_bounded_memory(
    tmp_path: Path,
) -> None:
    """Declared sizes are a lie (100 bytes each): inflating stops at the declared size and
    the CRC check refuses the member."""
    path = tmp_path / "liar.npz"
    bomb(path, members=80, member_bytes=15 * 2**20, declared=100)
    error, peak = peak_bytes_of(lambda: read_segment(path))
    assert isinstance(error, SegmentFileError), error
    assert peak < PEAK_BOUND_BYTES


def test_an_array_header_declaring_more_than_its_member_holds_is_refused(tmp_path: Path) -> None:
    """numpy allocates what a .npy header declares before reading: 2^40 float64 values in a
    member of a few bytes must be refused before that."""
    path = tmp_path / "liar.npz"
    data = npy_header((2**40,), "<f8") + bytes(64)
    deflated = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = deflated.compress(data) + deflated.flush()
    write_zip(path, [("drive.0.points_m.npy", payload, zlib.crc32(data), len(data))])
    error, peak = peak_bytes_of(lambda: read_segment(path))
    assert isinstance(error, SegmentFileError), error
    assert "declares float64[1099511627776]" in str(error)
    assert peak < PEAK_BOUND_BYTES


def test_an_archive_listing_too_many_members_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "many.npz"
    data = npy_header((0,))
    deflated = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = deflated.compress(data) + deflated.flush()
    write_zip(
        path,
        [(f"m{i}.npy", payload, zlib.crc32(data), len(data)) for i in range(MAX_MEMBERS + 1)],
    )
    with pytest.raises(SegmentFileError, match=f"{MAX_MEMBERS + 1} members"):
        read_segment(path)


def test_a_file_larger_than_the_total_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.npz"
    with open(path, "wb") as f:
        f.truncate(MAX_SEGMENT_BYTES + 1)  # sparse: no disk used
    error, peak = peak_bytes_of(lambda: read_segment(path))
    assert isinstance(error, SegmentTooLargeError), error
    assert error.limit_name == "MAX_SEGMENT_BYTES"
    assert peak < 2**20


def test_real_segments_are_far_below_the_limits(tmp_path: Path) -> None:
    for preset in ("default", "hard"):
        path = tmp_path / f"{preset}.npz"
        segment = generate_segment(seed=3, index=4, preset=preset)
        write_segment(path, segment)
        assert read_segment(path).same_as(segment)
        assert path.stat().st_size < MAX_SEGMENT_BYTES // 64
