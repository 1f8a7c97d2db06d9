"""One exception tree for roadchange, split by what the caller does about it.

```
RoadchangeError
├── InvalidParameterError   a function was called with a value outside its documented range:
│                           fix the call (the message names the parameter and the range)
└── SegmentFileError        a segment file is missing, truncated, corrupted or of another
    │                       format version: regenerate or re-download it (the message names it)
    └── SegmentTooLargeError  a segment file inflates past a byte limit (a decompression
                              bomb, or not a segment): the message names the limit
```
"""

from __future__ import annotations

from pathlib import Path


class RoadchangeError(Exception):
    """Root of every error roadchange raises on purpose."""


class InvalidParameterError(RoadchangeError, ValueError):
    """A parameter is outside its documented range; the message names it and the range."""

    def __init__(self, name: str, value: object, expected: str) -> None:
        super().__init__(f"{name}={value!r} is invalid: expected {expected}")
        self.name = name
        self.value = value


class SegmentFileError(RoadchangeError):
    """A segment file cannot be read: the message names the file and what is wrong with it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            f"segment file {str(path)!r} is unreadable: {problem}; "
            "regenerate it with `roadchange generate` (or fetch it again)"
        )
        self.path = path
        self.problem = problem


class SegmentTooLargeError(SegmentFileError):
    """A segment file holds, or inflates to, more bytes than a segment can: `.limit_name` and
    `.limit_bytes` name the limit (`roadchange.segfile`), `.size_bytes` what was seen."""

    def __init__(
        self, path: Path, what: str, size_bytes: int, limit_name: str, limit_bytes: int
    ) -> None:
        super().__init__(
            path,
            f"{what}: {size_bytes} bytes, above {limit_name} = {limit_bytes} bytes "
            f"({limit_bytes / 2**20:g} MiB): it is not a segment written by roadchange "
            "(a decompression bomb?); it was refused before it was inflated further",
        )
        self.size_bytes = size_bytes
        self.limit_name = limit_name
        self.limit_bytes = limit_bytes
