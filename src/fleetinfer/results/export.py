"""Results out of a store into a file: JSON lines, CSV or Parquet (the `parquet` extra).

Every format has the same columns, in this order; `value` and `payload` are JSON (objects in
JSON lines, JSON text in CSV and Parquet). A file is written beside its final path and moved
into place when complete, so a failed export leaves no partial file.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from fleetinfer.errors import InputError, MissingExtraError
from fleetinfer.payloads import canonical_json
from fleetinfer.results.base import TaskResult

FORMATS = ("jsonl", "csv", "parquet")
FIELDS = (
    "task_id",
    "task_name",
    "status",
    "value",
    "error",
    "attempts",
    "worker",
    "started_at",
    "finished_at",
    "duration_s",
    "payload",
    "payload_sha256",
    "models",
)
PARQUET_BATCH = 10_000


def result_record(result: TaskResult) -> dict[str, Any]:
    """One result as a flat dict in `FIELDS` order (value and payload as JSON values)."""
    return {
        "task_id": result.task_id,
        "task_name": result.task_name,
        "status": str(result.status),
        "value": result.value,
        "error": result.error,
        "attempts": result.attempts,
        "worker": result.worker,
        "started_at": result.started_at,
        "finished_at": result.finished_at,
        "duration_s": result.duration_s,
        "payload": result.payload,
        "payload_sha256": result.payload_sha256,
        "models": result.models,
    }


def _flat(result: TaskResult) -> dict[str, Any]:
    """A record with value and payload as JSON text (None stays None), for CSV and Parquet."""
    record = result_record(result)
    record["value"] = canonical_json(result.value)
    record["payload"] = None if result.payload is None else canonical_json(result.payload)
    return record


def check_format(name: str) -> str:
    """`jsonl`, `csv` or `parquet`; anything else raises `InputError`."""
    if name not in FORMATS:
        raise InputError(f"export format {name!r} is not one of {', '.join(FORMATS)}")
    return name


def export_results(results: Iterable[TaskResult], out: str, fmt: str) -> int:
    """Write `results` to `out` ('-' = stdout; not for parquet) as `fmt`; returns the rows."""
    check_format(fmt)
    writer = {"jsonl": _write_jsonl, "csv": _write_csv, "parquet": _write_parquet}[fmt]
    if fmt == "parquet":
        _import_pyarrow()  # before creating any file
    if out == "-":
        if fmt == "parquet":
            raise InputError("parquet is a binary format: give --out FILE, not stdout")
        return writer(results, sys.stdout)
    with _file_in_place(Path(out), binary=fmt == "parquet") as file:
        return writer(results, file)


@contextlib.contextmanager
def _file_in_place(path: Path, *, binary: bool) -> Iterator[IO[Any]]:
    """A temporary file beside `path`, renamed to it when the block ends without error."""
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    except OSError as exc:
        raise InputError(
            f"cannot write the export to {str(path)!r} ({exc.strerror}): choose a path in a "
            "folder that exists and that you can write"
        ) from exc
    try:
        file: IO[Any] = (
            os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")
        )
        with file:
            yield file
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _write_jsonl(results: Iterable[TaskResult], file: IO[Any]) -> int:
    rows = 0
    for result in results:
        file.write(json.dumps(result_record(result), ensure_ascii=False) + "\n")
        rows += 1
    return rows


def _write_csv(results: Iterable[TaskResult], file: IO[Any]) -> int:
    writer = csv.DictWriter(file, fieldnames=FIELDS)
    writer.writeheader()
    rows = 0
    for result in results:
        writer.writerow(_flat(result))
        rows += 1
    return rows


def _import_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise MissingExtraError("pyarrow", "parquet", "exporting results as Parquet") from exc
    return pyarrow


def _write_parquet(results: Iterable[TaskResult], file: IO[Any]) -> int:
    pa = _import_pyarrow()
    schema = pa.schema(
        [
            ("task_id", pa.string()),
            ("task_name", pa.string()),
            ("status", pa.string()),
            ("value", pa.string()),
            ("error", pa.string()),
            ("attempts", pa.int64()),
            ("worker", pa.string()),
            ("started_at", pa.float64()),
            ("finished_at", pa.float64()),
            ("duration_s", pa.float64()),
            ("payload", pa.string()),
            ("payload_sha256", pa.string()),
            ("models", pa.string()),
        ]
    )
    rows = 0
    with pa.parquet.ParquetWriter(file, schema) as writer:
        batch: list[dict[str, Any]] = []
        for result in results:
            batch.append(_flat(result))
            if len(batch) >= PARQUET_BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                rows, batch = rows + len(batch), []
        if batch or rows == 0:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            rows += len(batch)
    return rows
