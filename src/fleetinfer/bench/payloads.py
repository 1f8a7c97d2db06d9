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
