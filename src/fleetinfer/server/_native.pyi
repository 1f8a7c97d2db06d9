"""Types of the compiled repeated call (`_native.c`)."""

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

class Lane:
    def __init__(
        self, fd: int, region_address: int, region_size: int, spin_us: float, ndarray: type[Any]
    ) -> None: ...
    def call(
        self, model: str, version: int | None, inputs: Mapping[str, Any]
    ) -> dict[str, np.ndarray[Any, Any]] | tuple[Any, int, bytes] | None: ...
    def key(
        self,
        model: str,
        version: int | None,
        inputs: Mapping[str, Any],
        copied_in: bool = False,
    ) -> bytes | None: ...
    def keep(
        self,
        key: bytes,
        token: object,
        frame: bytearray,
        staged: tuple[int | None, ...],
        reply: bytes,
        outputs: tuple[tuple[str, np.ndarray[Any, Any]], ...],
    ) -> None: ...
    def clear(self) -> None: ...
    def rebind(self, region_address: int, region_size: int) -> None: ...
    def close(self) -> None: ...
    def next_id(self) -> int: ...
    def kept(self) -> int: ...

class Tally:
    def read(self) -> None: ...
    def answered(self) -> None: ...
    def in_flight(self) -> int: ...

class Latch:
    def __enter__(self) -> bool: ...
    def __exit__(self, *exc: object) -> bool: ...

class ServerLane:
    def __init__(
        self, fd: int, readable_fd: int, tally: Tally, send_latch: Latch, spin_us: float
    ) -> None: ...
    def serve(self) -> tuple[int, int, bytes]: ...
    def keep(
        self,
        body: bytes,
        run: Callable[..., bool],
        args: tuple[Any, ...],
        reply: bytes,
        registry: object,
        generation: int,
        region_fd: int,
        region_size: int,
    ) -> None: ...
    def clear(self) -> None: ...
    def close(self) -> None: ...
    def kept(self) -> int: ...

HEADER_SIZE: int
MAX_BODY_BYTES: int
PROTOCOL_VERSION: int
KIND_INFER: int
KIND_OK: int
