"""Decoding bytes that came from outside the process: queue messages, stored rows, HTTP replies.

One rule for every such decoder: the nesting depth is bounded before any recursive parser runs
(`MAX_JSON_DEPTH`), and every failure of the parser (bad syntax, bad UTF-8, numbers out of
range, RecursionError, MemoryError, wrong types) becomes `MalformedMessageError`, raised `from`
the original. A caller that dead-letters or refuses on `MalformedMessageError` then does so on
the first delivery of a hostile message instead of crashing on it again and again.

    value = decode_json(body, what="message 42")                    # as json.loads, depth <= 128
    envelope = decode_json(body, what="message 42", into=Envelope)  # into a msgspec type
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any, Final, TypeVar

import msgspec

from fleetinfer.errors import MalformedMessageError

MAX_JSON_DEPTH: Final = 128
"""Deepest nesting of arrays and objects accepted (serde_json's default limit)."""

T = TypeVar("T")
_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_STEP: Final = [0] * 256
for _open in b"[{":
    _STEP[_open] = 1
for _close in b"]}":
    _STEP[_close] = -1
SHOWN_CHARS: Final = 80


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text (brackets inside strings do not
    count). Linear time, no recursion; garbage gives some number, never an error."""
    if data.count(b"[") + data.count(b"{") <= 1:
        return int(b"[" in data or b"{" in data)
    skeleton = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(accumulate(_STEP[b] for b in skeleton), default=0)


def shown(data: str | bytes) -> str:
    """The start of a body, printable, for an error message."""
    head = data[:SHOWN_CHARS]
    return repr(head if isinstance(head, str) else head.decode("utf-8", "replace"))


def as_utf8(data: str | bytes | bytearray | memoryview, *, what: str) -> bytes:
    """`data` as UTF-8 bytes; text that cannot be encoded (lone surrogates) is malformed."""
    if isinstance(data, str):
        try:
            return data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise MalformedMessageError(
                f"{what} is not valid Unicode text ({exc.reason} at position {exc.start}): "
                f"send UTF-8 text, got {shown(data)}"
            ) from exc
    return bytes(data)


def check_json_depth(data: bytes, *, what: str, limit: int = MAX_JSON_DEPTH) -> None:
    """`MalformedMessageError` if `data` nests deeper than `limit` (fewer openers than the
    limit cannot: most messages are checked by two counts)."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return
    depth = json_depth(data)
    if depth > limit:
        raise MalformedMessageError(
            f"{what} nests arrays and objects {depth} deep, above the limit of {limit}: "
            f"flatten the data, got {shown(data)}"
        )


def decode_json(
    data: str | bytes | bytearray | memoryview,
    *,
    what: str,
    into: type[T] = Any,  # type: ignore[assignment]
    expected: str = "JSON",
    limit: int = MAX_JSON_DEPTH,
) -> T:
    """Decode untrusted JSON (into the msgspec type `into` when given, else as `json.loads` does);
    any failure is `MalformedMessageError` whose message names `what`, says what was
    `expected` and shows the start of the data."""
    raw = as_utf8(data, what=what)
    check_json_depth(raw, what=what, limit=limit)
    try:
        value: T = json.loads(raw) if into is Any else msgspec.json.decode(raw, type=into)
    except Exception as exc:  # every failure of the parser: the data is bad
        raise MalformedMessageError(
            f"{what} is not {expected} ({_reason(exc)}): expected {expected}, got {shown(raw)}"
        ) from exc
    return value


def _reason(exc: Exception) -> str:
    if isinstance(exc, msgspec.MsgspecError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
