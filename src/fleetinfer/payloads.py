"""Payload files and task ids: one JSON payload per line, and the ids that make a resubmit safe.

A task id is the idempotency key end to end (queue deduplication, the worker's results-store
check, the result row), so a producer that resubmits a file should give every payload the same
id each time, either from a field of the payload (`--id-field`) or from its content
(`--id-from-payload`: sha256 of the task name and the payload's canonical JSON).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from fleetinfer.errors import InputError
from fleetinfer.untrusted import check_json_depth

MAX_TASK_ID_CHARS = 256


def canonical_json(value: Any) -> str:
    """The one JSON text of a value: sorted keys, no spaces, UTF-8 characters as they are."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise InputError(f"value is not JSON-serializable ({exc}): {value!r:.80}") from exc


def payload_sha256(payload: Any) -> str:
    """sha256 (hex) of the payload's canonical JSON text, UTF-8 encoded."""
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def content_task_id(task_name: str, payload: Any) -> str:
    """A deterministic id from the task and the payload's content: the same payload sent to
    two different tasks gets two ids, since results are keyed by task id alone."""
    text = f"{task_name}\n{canonical_json(payload)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_jsonl(lines: Iterable[bytes], name: str) -> list[Any]:
    """JSON values, one per non-blank line of UTF-8 text; the first bad line raises
    `InputError` naming its number."""
    payloads: list[Any] = []
    for number, raw in enumerate(lines, start=1):
        line = _decode_line(raw, number, name)
        if not line.strip():
            continue
        try:
            check_json_depth(raw, what=f"line {number} of {name}")  # a message must decode too
            payloads.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InputError(
                f"line {number} of {name} is not JSON ({exc.msg} at column {exc.colno}): "
                f"expected one JSON payload per line, got {line.strip()[:80]!r}"
            ) from exc
        except (ValueError, RecursionError) as exc:  # numbers too long for int(), etc.
            raise InputError(
                f"line {number} of {name} is not a payload this queue can carry ({exc}): "
                "expected one JSON payload per line"
            ) from exc
    return payloads


def _decode_line(raw: bytes, number: int, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"line {number} of {name} is not UTF-8 text (byte {raw[exc.start]:#04x} at column "
            f"{exc.start + 1}): expected one JSON payload per line in UTF-8; convert the file, "
            "for example with `iconv -f latin1 -t utf-8`"
        ) from None


def ids_from_field(payloads: Sequence[Any], field: str, name: str) -> list[str]:
    """The id of each payload from its field `field` (a string or an integer), checked unique."""
    ids = [_id_of(payload, field, name, index) for index, payload in enumerate(payloads)]
    check_unique(ids, name)
    return ids


def _id_of(payload: Any, field: str, name: str, index: int) -> str:
    where = f"payload {index + 1} of {name}"
    if not isinstance(payload, dict):
        raise InputError(
            f"{where} is a {type(payload).__name__}, not an object: --id-field {field!r} needs "
            'JSON objects such as {"' + field + '": "a-1", ...}'
        )
    if field not in payload:
        raise InputError(
            f"{where} has no field {field!r} (fields: {', '.join(sorted(payload)) or 'none'}): "
            "give every payload an id, or use --id-from-payload"
        )
    value = payload[field]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(f"{where}: the id {field!r} must be a string or an integer, got {value!r}")
    task_id = str(value)
    if not task_id or len(task_id) > MAX_TASK_ID_CHARS:
        raise InputError(
            f"{where}: the id {field!r} must be 1 to {MAX_TASK_ID_CHARS} characters, got "
            f"{len(task_id)}"
        )
    return task_id


def ids_from_content(payloads: Sequence[Any], task_name: str, name: str) -> list[str]:
    """A content id per payload; two equal payloads in one file are refused (one task twice)."""
    ids = [content_task_id(task_name, payload) for payload in payloads]
    check_unique(ids, name)
    return ids


def check_unique(ids: Sequence[str], name: str) -> None:
    """Two payloads of one file with the same id raise `InputError` naming both."""
    first: dict[str, int] = {}
    for index, task_id in enumerate(ids):
        if task_id in first:
            raise InputError(
                f"payloads {first[task_id] + 1} and {index + 1} of {name} have the same task id "
                f"{task_id!r}: give each task its own id (one of them would never run)"
            )
        first[task_id] = index
