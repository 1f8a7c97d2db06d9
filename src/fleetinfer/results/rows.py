"""What every store shares: checking a result before it is written, naming tables, URL options."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from fleetinfer.errors import ConfigError, InputError
from fleetinfer.payloads import canonical_json, payload_sha256
from fleetinfer.results.base import TaskResult, TaskStatus
from fleetinfer.untrusted import check_json_depth, decode_json

DEFAULT_TABLE = "fleetinfer_results"
PAYLOAD_MODES = ("full", "sha256")
"""What a row keeps of the payload (URL option `payload`): all of it and its hash, or the hash."""
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


def payload_mode(url: str, options: dict[str, str]) -> str:
    """The `payload` option of a store URL: `full` (default) or `sha256`."""
    mode = options.get("payload", "full")
    if mode not in PAYLOAD_MODES:
        raise ConfigError(
            f"results store {url!r}: payload={mode!r} is not an option: use payload=full "
            "(keep each payload and its sha256) or payload=sha256 (keep only the hash)"
        )
    return mode


def filter_clause(
    status: TaskStatus | str | None, task_name: str | None, placeholder: str
) -> tuple[str, tuple[Any, ...]]:
    """` AND status = ? AND task_name = ?` for the filters given, and their parameters."""
    sql: list[str] = []
    params: list[Any] = []
    if status is not None:
        sql.append(f" AND status = {placeholder}")
        params.append(check_status(status).value)
    if task_name is not None:
        sql.append(f" AND task_name = {placeholder}")
        params.append(task_name)
    return "".join(sql), tuple(params)


def check_status(status: TaskStatus | str) -> TaskStatus:
    """A status filter as a `TaskStatus`; an unknown one raises `InputError`."""
    try:
        return TaskStatus(status)
    except ValueError:
        raise InputError(
            f"status {status!r} is not one of {', '.join(s.value for s in TaskStatus)}"
        ) from None


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


def result_from_row(row: tuple[Any, ...], value: Any, payload: Any) -> TaskResult:
    """Build a result from a row in `COLUMNS` order, with value and payload already decoded."""
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
        payload=payload,
        payload_sha256=row[10],
        models=row[11] or "",
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
    "payload",
    "payload_sha256",
    "models",
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


def result_row(result: TaskResult, *, keep_payload: bool = True) -> tuple[Any, ...]:
    """The validated column values of a result, in `COLUMNS` order (value and payload as JSON
    text); without `keep_payload`, the payload column is NULL and only its hash is kept."""
    status = check_result(result)
    payload_text, digest = _payload_columns(result, keep_payload=keep_payload)
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
        payload_text,
        digest,
        result.models,
    )


def _payload_columns(result: TaskResult, *, keep_payload: bool) -> tuple[str | None, str | None]:
    if result.payload is None and result.payload_sha256 is None:
        return None, None  # a result written without its payload (older producers, tests)
    digest = result.payload_sha256 or payload_sha256(result.payload)
    return (canonical_json(result.payload) if keep_payload else None), digest
