"""Benchmark payloads: a JSONL file, one JSON payload per line, cycled or cut to N tasks."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from fleetinfer.errors import InputError


def load_payloads(path: Path, tasks: int) -> list[Any]:
    """The first `tasks` payloads of `path`, starting again from the top when the file is shorter.

    Blank lines are skipped; a line that is not JSON is an `InputError` naming the file and line."""
    if tasks < 1:
        raise InputError(f"the number of tasks must be at least 1, got {tasks}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read payloads file {str(path)!r}: {exc}") from exc
    payloads = [_decode(path, number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if not payloads:
        raise InputError(
            f"payloads file {str(path)!r} has no payload: expected one JSON value per line, "
            'for example {"path": "segments/a.seg"}'
        )
    return list(itertools.islice(itertools.cycle(payloads), tasks))


def _decode(path: Path, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}:{number}: not a JSON payload ({exc.msg} at column {exc.colno}): "
            f"got {line.strip()[:80]!r}; expected one JSON value per line"
        ) from exc


# How a task calls its model: the payload field the task reads (roadchange's `max_batch`, windows
# per model call) and its value per pattern; None leaves the payload's own (or the task's default).
CALL_PATTERN_FIELD = "max_batch"
CALL_PATTERNS: dict[str, int | None] = {"per-segment": None, "per-window": 1}


def with_call_pattern(payloads: list[Any], pattern: str | None) -> list[Any]:
    """`payloads` with `CALL_PATTERN_FIELD` set for `pattern`: `per-window` (one window per model
    call, `max_batch = 1`: dozens of small calls per task, production's pattern) or `per-segment`
    (the field removed: the task's default, one call per segment's windows). None: unchanged."""
    if pattern is None:
        return payloads
    if pattern not in CALL_PATTERNS:
        raise InputError(
            f"--call-pattern must be one of {', '.join(CALL_PATTERNS)}, got {pattern!r}"
        )
    value = CALL_PATTERNS[pattern]
    return [_with_field(p, value) for p in payloads]


def _with_field(payload: Any, value: int | None) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise InputError(
            f"--call-pattern sets the payload field {CALL_PATTERN_FIELD!r}, so each payload must "
            f"be a JSON object; got {payload!r:.80}: drop --call-pattern or use object payloads"
        )
    changed = {k: v for k, v in payload.items() if k != CALL_PATTERN_FIELD}
    if value is not None:
        changed[CALL_PATTERN_FIELD] = value
    return changed
