"""Worker → agent events: one JSON object per line on a pipe the agent passes to each worker.

A line is written with one `os.write` and kept under `PIPE_BUF` (4096 bytes), so lines from a
worker never interleave and a worker killed mid-task loses nothing it already reported. Task
code's own stdout and stderr stay separate (they go to the node's terminal or log).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

MAX_EVENT_BYTES = 4000


class EventSink(Protocol):
    """Where a worker reports what it did."""

    def emit(self, event: str, **fields: Any) -> None: ...


class PipeEvents:
    """Events as JSON lines on a file descriptor (the write end of the agent's pipe). No lock:
    one `os.write` of at most PIPE_BUF bytes is atomic, and a signal handler may emit while the
    interrupted code was emitting too."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def emit(self, event: str, **fields: Any) -> None:
        line = encode_event(event, fields)
        with contextlib.suppress(OSError):  # agent gone: the work goes on
            os.write(self._fd, line)


class MemoryEvents:
    """Events kept in a list (in-process workers and tests)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]


def encode_event(event: str, fields: Mapping[str, Any]) -> bytes:
    """One line of JSON, cut to MAX_EVENT_BYTES by shortening long string fields."""
    body = {"event": event, **fields}
    line = json.dumps(body, separators=(",", ":"), default=str)
    if len(line.encode("utf-8")) > MAX_EVENT_BYTES:
        body = {k: (v[:200] if isinstance(v, str) else v) for k, v in body.items()}
        line = json.dumps(body, separators=(",", ":"), default=str)[:MAX_EVENT_BYTES]
    return (line + "\n").encode("utf-8")


def read_events(fd: int, handle: Callable[[dict[str, Any]], None]) -> None:
    """Read JSON lines from `fd` until EOF, calling `handle` for each; bad lines are skipped."""
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        buffer = b""
        while chunk := pipe.read(65536):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                _handle_line(line, handle)


def _handle_line(line: bytes, handle: Callable[[dict[str, Any]], None]) -> None:
    try:
        event = json.loads(line)
    except ValueError:
        return
    if isinstance(event, dict) and isinstance(event.get("event"), str):
        handle(event)
