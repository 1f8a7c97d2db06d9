"""POSIX shared-memory regions that carry tensors between a worker and the model server.

A client creates its own region (`SharedRegion.create`): a file in /dev/shm named
`fleetinfer-<pid>-<random>`, opened with O_CREAT | O_EXCL | O_NOFOLLOW and mode 0600, then mapped.
The server attaches to it by name (`SharedRegion.attach`) after checking the name, the owner, the
mode and the size, and checks every offset and size against the mapped size (and the file's current
size) before it touches memory. The client unlinks its region when it closes; the server unlinks
the regions of a connection that drops, so a SIGKILLed worker leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any, Final

import numpy as np

from fleetinfer.errors import InvalidInputError, MalformedMessageError, PayloadTooLargeError

SHM_DIR: Final = Path("/dev/shm")
SEGMENT_PREFIX: Final = "fleetinfer-"
_SEGMENT_NAME: Final = re.compile(r"fleetinfer-[0-9]{1,10}-[0-9a-f]{16}")


def new_segment_name() -> str:
    return f"{SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"


def our_segments() -> list[str]:
    """Names of every fleetinfer segment currently in /dev/shm (for crash-hygiene checks)."""
    return sorted(p.name for p in SHM_DIR.iterdir() if _SEGMENT_NAME.fullmatch(p.name))


def unlink_segment(name: str) -> bool:
    """Remove a segment's name; True if it existed. Mappings stay valid until unmapped."""
    if not _SEGMENT_NAME.fullmatch(name):
        return False
    try:
        os.unlink(SHM_DIR / name)
    except FileNotFoundError:
        return False
    return True


class SharedRegion:
    """One mapped shared-memory file: its name, descriptor, mapping and mapped size."""

    def __init__(self, name: str, fd: int, size_bytes: int) -> None:
        self.name, self.fd, self.size_bytes = name, fd, size_bytes
        self.mmap = mmap.mmap(fd, size_bytes, flags=mmap.MAP_SHARED)
        self.buffer = np.frombuffer(self.mmap, dtype=np.uint8)
        self.address: int = self.buffer.__array_interface__["data"][0]  # where it is mapped

    @classmethod
    def create(cls, size_bytes: int) -> SharedRegion:
        """A new region owned by this process (client side): mode 0600, name unique."""
        name = new_segment_name()
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(SHM_DIR / name, flags, 0o600)
        try:
            os.ftruncate(fd, size_bytes)
            return cls(name, fd, size_bytes)
        except BaseException:
            os.close(fd)
            unlink_segment(name)
            raise

    @classmethod
    def attach(cls, name: str, size_bytes: int, *, max_bytes: int, uid: int) -> SharedRegion:
        """Map a client's region (server side) after checking name, owner, mode and size."""
        if not _SEGMENT_NAME.fullmatch(name):
            raise MalformedMessageError(
                f"region name {name!r} is not a fleetinfer segment name "
                "(expected fleetinfer-<pid>-<16 hex digits>)"
            )
        if not 0 < size_bytes <= max_bytes:
            raise PayloadTooLargeError(f"shared-memory region {name}", size_bytes, max_bytes)
        try:
            fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise MalformedMessageError(
                f"cannot open region {name} in {SHM_DIR}: {exc.strerror}; "
                "create it before attaching and keep it until the connection closes"
            ) from exc
        try:
            _check_region_file(name, os.fstat(fd), size_bytes, uid)
            return cls(name, fd, size_bytes)
        except BaseException:
            os.close(fd)
            raise

    def resize(self, size_bytes: int) -> SharedRegion:
        """The same file grown to `size_bytes`, mapped anew (client side); this mapping stays."""
        os.ftruncate(self.fd, size_bytes)
        return SharedRegion(self.name, os.dup(self.fd), size_bytes)

    def check_intact(self) -> None:
        """Refuse to touch memory if the file shrank below the mapping (it would fault)."""
        if self.fd < 0:
            raise MalformedMessageError(f"region {self.name} was detached by a later attach")
        if os.fstat(self.fd).st_size < self.size_bytes:
            raise MalformedMessageError(
                f"region {self.name} shrank below its attached size of {self.size_bytes} bytes: "
                "re-attach after resizing"
            )

    def check_span(self, what: str, offset: int, nbytes: int) -> None:
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size_bytes:
            raise InvalidInputError(
                f"{what} spans bytes [{offset}, {offset + nbytes}) outside the region of "
                f"{self.size_bytes} bytes: offsets and sizes must lie inside the attached region"
            )

    def view(
        self, offset: int, dtype: np.dtype[Any], shape: tuple[int, ...]
    ) -> np.ndarray[Any, Any]:
        """A numpy view of the region (no copy); the caller has checked the span."""
        nbytes = math.prod(shape) * dtype.itemsize
        return self.buffer[offset : offset + nbytes].view(dtype).reshape(shape)

    def close(self) -> None:
        """Drop this mapping; if numpy views still use it, it unmaps when the last one goes."""
        self.buffer = np.empty(0, np.uint8)
        with contextlib.suppress(BufferError):  # views alive: the mapping goes with them
            self.mmap.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def unlink(self) -> bool:
        return unlink_segment(self.name)


def _check_region_file(name: str, st: os.stat_result, size_bytes: int, uid: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise MalformedMessageError(f"region {name} is not a regular file")
    if st.st_uid != uid or st.st_mode & 0o077:
        raise MalformedMessageError(
            f"region {name} must belong to the connecting user (uid {uid}) with mode 0600, "
            f"got uid {st.st_uid} mode {oct(st.st_mode & 0o777)}"
        )
    if st.st_size < size_bytes:
        raise MalformedMessageError(
            f"region {name} is {st.st_size} bytes, smaller than the {size_bytes} bytes announced"
        )
