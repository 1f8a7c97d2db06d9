"""Shared-memory regions and the client's arena allocator."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import numpy as np
import pytest

from fleetinfer.errors import InvalidInputError, MalformedMessageError, PayloadTooLargeError
from fleetinfer.server.channel import Arena
from fleetinfer.server.shm import SHM_DIR, SharedRegion, our_segments, unlink_segment


@pytest.fixture
def region() -> Iterator[SharedRegion]:
    region = SharedRegion.create(1 << 16)
    yield region
    region.unlink()
    region.close()


def test_a_new_region_is_private_and_carries_a_recognizable_name(region: SharedRegion) -> None:
    assert region.name.startswith(f"fleetinfer-{os.getpid()}-")
    assert region.name in our_segments()
    assert stat.S_IMODE((SHM_DIR / region.name).stat().st_mode) == 0o600


def test_the_server_sees_what_the_client_writes(region: SharedRegion) -> None:
    attached = SharedRegion.attach(region.name, 1 << 16, max_bytes=1 << 20, uid=os.getuid())
    try:
        region.view(128, np.dtype(np.float32), (2, 2))[...] = [[1, 2], [3, 4]]
        seen = attached.view(128, np.dtype(np.float32), (2, 2))
        np.testing.assert_array_equal(seen, [[1, 2], [3, 4]])
        del seen
    finally:
        attached.close()


@pytest.mark.parametrize(
    "name", ["../etc/passwd", "fleetinfer-1-zz", "other-1-0123456789abcdef", "fleetinfer-1-0123"]
)
def test_attach_refuses_names_that_are_not_ours(name: str) -> None:
    with pytest.raises(MalformedMessageError, match="not a fleetinfer segment name"):
        SharedRegion.attach(name, 4096, max_bytes=1 << 20, uid=os.getuid())


def test_attach_refuses_a_size_above_the_file_or_the_limit(region: SharedRegion) -> None:
    with pytest.raises(MalformedMessageError, match="smaller than"):
        SharedRegion.attach(region.name, 1 << 17, max_bytes=1 << 20, uid=os.getuid())
    with pytest.raises(PayloadTooLargeError):
        SharedRegion.attach(region.name, 1 << 16, max_bytes=1 << 10, uid=os.getuid())


def test_attach_refuses_a_region_of_another_user(region: SharedRegion) -> None:
    with pytest.raises(MalformedMessageError, match="must belong to the connecting user"):
        SharedRegion.attach(region.name, 1 << 16, max_bytes=1 << 20, uid=os.getuid() + 1)


def test_attach_refuses_a_missing_region() -> None:
    with pytest.raises(MalformedMessageError, match="cannot open region"):
        SharedRegion.attach("fleetinfer-1-0123456789abcdef", 4096, max_bytes=1 << 20, uid=0)


def test_a_region_that_shrank_is_not_touched(region: SharedRegion) -> None:
    attached = SharedRegion.attach(region.name, 1 << 16, max_bytes=1 << 20, uid=os.getuid())
    try:
        os.ftruncate(region.fd, 4096)
        with pytest.raises(MalformedMessageError, match="shrank"):
            attached.check_intact()
    finally:
        attached.close()


def test_spans_outside_the_region_are_refused(region: SharedRegion) -> None:
    region.check_span("x", 0, 1 << 16)
    for offset, nbytes in [(-1, 4), (0, (1 << 16) + 1), ((1 << 16) - 2, 4), (0, -5)]:
        with pytest.raises(InvalidInputError, match="outside the region"):
            region.check_span("x", offset, nbytes)


def test_unlink_ignores_names_that_are_not_ours() -> None:
    assert unlink_segment("../../tmp/x") is False
    assert unlink_segment("fleetinfer-1-0123456789abcdef") is False


def test_the_arena_reuses_freed_space_and_coalesces() -> None:
    arena = Arena(1024)
    a, b, c = arena.alloc(100), arena.alloc(100), arena.alloc(100)
    assert (a, b, c) == (0, 128, 256)
    arena.free(128, 128)
    assert arena.alloc(64) == 128
    arena.free(128, 64)
    arena.free(0, 128)
    arena.free(256, 128)
    assert arena.take_largest() == (0, 1024)
    assert arena.alloc(1) is None


def test_the_arena_grows_at_its_end() -> None:
    arena = Arena(256)
    assert arena.alloc(256) == 0
    arena.grow(1024)
    assert arena.alloc(512) == 256
