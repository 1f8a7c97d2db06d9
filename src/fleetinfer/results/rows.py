"""What every store shares: checking a result before it is written, naming tables, URL options."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from fleetinfer.errors import ConfigError, InputError
from fleetinfer.results.base import TaskResult, TaskStatus
from fleetinfer.untrusted import check_json_depth, decode_json

DEFAULT_TABLE = "fleetinfer_results"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def check_table_name(url: str, table: str) -> str:
    """A table name is a plain SQL identifier (letters, digits, underscore; 63 characters max)."""
    if not _IDENTIFIER.fullmatch(table):
        raise ConfigError(
            f"results store {url!r}: table name {table!r} is not a plain identifier: use "
            "letters, digits and underscores, starting with a letter, at most 63 characters"
        )
    return table


def split_options(url: str, query: str, accepted: tuple[str, ...]) -> tuple[dict[str, str], str]:
    """Our options out of a query string; returns them and the query string left for the driver."""
    ours: dict[str, str] = {}
    rest: list[str] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in accepted:
            if key in ours:
                raise ConfigError(f"results store {url!r} repeats the option {key!r}: give it once")
            ours[key] = value
        else:
            rest.append(f"{key}={value}")
    return ours, "&".join(rest)


def check_result(result: TaskResult) -> TaskStatus:
    """Reject what cannot be stored faithfully; returns the status as a `TaskStatus`."""
    if not isinstance(result.task_id, str) or not result.task_id:
        raise InputError(f"a result needs a non-empty string task_id, got {result.task_id!r}")
    try:
        return TaskStatus(result.status)
    except ValueError as exc:
        raise InputError(
            f"result {result.task_id!r} has status {result.status!r}: expected one of "
            f"{', '.join(s.value for s in TaskStatus)}"
        ) from exc


def encode_value(result: TaskResult) -> str:
    """The value as JSON text; a value JSON cannot hold raises `InputError`."""
    try:
        text = json.dumps(result.value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InputError(
            f"result {result.task_id!r}: value is not JSON-serializable ({exc}): return dicts, "
            "lists, strings, numbers, booleans or None from tasks"
        ) from exc
    check_json_depth(text.encode(), what=f"result {result.task_id!r}: value")  # readable back
    return text


def decode_value(row: tuple[Any, ...]) -> Any:
    """The JSON value column of a stored row; a row that is not JSON raises
    `MalformedMessageError` naming the task id (the store was written by something else)."""
    return decode_json(row[3], what=f"the stored value of task {row[0]!r}")


def result_from_row(row: tuple[Any, ...], value: Any) -> TaskResult:
    """Build a result from (task_id, task_name, status, value, error, attempts, worker,
    started_at, finished_at), with the value already decoded."""
    return TaskResult(
        task_id=row[0],
        task_name=row[1],
        status=TaskStatus(row[2]),
        value=value,
        error=row[4],
        attempts=row[5],
        worker=row[6],
        started_at=row[7],
        finished_at=row[8],
    )


def check_batch_size(batch_size: int) -> None:
    """Iteration pages hold at least one row."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")


# A stored success is final; a stored failure (dead, rejected) gives way to a later success, so a
# task redriven from the dead-letter queue can still record its result. Both backends share it.
UPDATABLE_COLUMNS = (
    "task_name",
    "status",
    "value",
    "error",
    "attempts",
    "worker",
    "started_at",
    "finished_at",
)
COLUMNS = ", ".join(("task_id", *UPDATABLE_COLUMNS))
"""The stored columns, in the order `result_row` gives and `result_from_row` reads."""


def upsert_clause(table: str) -> str:
    """`ON CONFLICT` clause: keep the first success; replace a failure by a success only."""
    assignments = ", ".join(f"{c} = excluded.{c}" for c in UPDATABLE_COLUMNS)
    return (
        f"ON CONFLICT (task_id) DO UPDATE SET {assignments} "
        f"WHERE {table}.status <> 'succeeded' AND excluded.status = 'succeeded'"
    )


def result_row(result: TaskResult) -> tuple[Any, ...]:
    """The validated column values of a result, in `COLUMNS` order (value as JSON text)."""
    status = check_result(result)
    return (
        result.task_id,
        result.task_name,
        status.value,
        encode_value(result),
        result.error,
        result.attempts,
        result.worker,
        result.started_at,
        result.finished_at,
    )
