"""The embedded results store: one SQLite file in WAL mode, first write wins.

`sqlite:///relative/results.db?table=name` (four slashes for an absolute path). Writes are
`INSERT ... ON CONFLICT (task_id) DO NOTHING`, so concurrent writers of one task id from many
processes leave exactly one row, the first.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleetinfer.errors import ConfigError, StoreUnavailableError
from fleetinfer.results.base import ResultStore, TaskResult, TaskStatus
from fleetinfer.results.rows import (
    COLUMNS,
    DEFAULT_TABLE,
    check_batch_size,
    check_table_name,
    decode_value,
    filter_clause,
    payload_mode,
    result_from_row,
    result_row,
    split_options,
    upsert_clause,
)
from fleetinfer.sqlite import connect_wal
from fleetinfer.untrusted import decode_json

SCHEMA_SQL = resources.files(__package__).joinpath("sqlite_schema.sql").read_text("utf-8")


@contextmanager
def _translate_sqlite_errors(url: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise StoreUnavailableError(
            f"SQLite results store {url!r} failed: {exc}; check the file is writable, then retry"
        ) from exc


def _path_from_url(url: str) -> Path:
    path = urlsplit(url).path
    if len(path) < 2 or path[1:] == ":memory:":
        raise ConfigError(
            f"SQLite URL {url!r} names no file: expected sqlite:///relative/results.db or "
            "sqlite:////absolute/results.db (in-memory databases cannot be shared)"
        )
    return Path(path[1:])


def _add_payload_columns(conn: sqlite3.Connection, table: str) -> None:
    """Migrate a table made before payloads were kept: add the two payload columns."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        columns = {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
        for column in ("payload", "payload_sha256", "models"):
            if column not in columns:
                conn.execute(f'ALTER TABLE "{table}" ADD COLUMN {column} TEXT')
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _decoded(row: tuple[Any, ...]) -> TaskResult:
    payload = (
        None if row[9] is None else decode_json(row[9], what=f"the payload of task {row[0]!r}")
    )
    return result_from_row(row, decode_value(row), payload)


class SqliteResultStore(ResultStore):
    """Results in one table of one SQLite file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = DEFAULT_TABLE,
        url: str | None = None,
        keep_payload: bool = True,
    ) -> None:
        self.path = Path(path)
        self.url = url or f"sqlite:///{self.path}?table={table}"
        self.table = check_table_name(self.url, table)
        self.keep_payload = keep_payload
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._connection()

    @classmethod
    def from_url(cls, url: str) -> SqliteResultStore:
        """Open `sqlite:///results.db?table=name&payload=full|sha256`."""
        options, rest = split_options(url, urlsplit(url).query, ("table", "payload"))
        if rest:
            raise ConfigError(
                f"results store {url!r} has unknown options {rest!r}: the accepted options are "
                "table and payload"
            )
        return cls(
            _path_from_url(url),
            table=options.get("table", DEFAULT_TABLE),
            url=url,
            keep_payload=payload_mode(url, options) == "full",
        )

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self._conn = self._connect()
            self._pid = os.getpid()
        return self._conn

    def _connect(self) -> sqlite3.Connection:
        with _translate_sqlite_errors(self.url):
            conn = connect_wal(
                self.path,
                what=f"SQLite results store {self.url!r}",
                schema_sql=SCHEMA_SQL.format(
                    table=f'"{self.table}"', index=f'"{self.table}_by_status"'
                ),
            )
            try:
                _add_payload_columns(conn, self.table)
            except BaseException:
                conn.close()
                raise
            return conn

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _translate_sqlite_errors(self.url):
            yield self._connection()

    def put(self, result: TaskResult) -> bool:
        row = (*result_row(result, keep_payload=self.keep_payload), time.time())
        with self._db() as conn:
            cur = conn.execute(
                f'INSERT INTO "{self.table}" ({COLUMNS}, stored_at) '
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) " + upsert_clause(f'"{self.table}"'),
                row,
            )
        return cur.rowcount == 1

    def get(self, task_id: str) -> TaskResult | None:
        with self._db() as conn:
            row = conn.execute(
                f'SELECT {COLUMNS} FROM "{self.table}" WHERE task_id = ?', (task_id,)
            ).fetchone()
        return None if row is None else _decoded(row)

    def count(self, status: TaskStatus | None = None) -> int:
        with self._db() as conn:
            if status is None:
                row = conn.execute(f'SELECT COUNT(*) FROM "{self.table}"').fetchone()
            else:
                row = conn.execute(
                    f'SELECT COUNT(*) FROM "{self.table}" WHERE status = ?',
                    (TaskStatus(status).value,),
                ).fetchone()
        return int(row[0])

    def iter_results(
        self,
        *,
        batch_size: int = 1000,
        status: TaskStatus | None = None,
        task_name: str | None = None,
    ) -> Iterator[TaskResult]:
        check_batch_size(batch_size)
        where, params = filter_clause(status, task_name, "?")
        after = ""
        while True:
            with self._db() as conn:
                rows = conn.execute(
                    f'SELECT {COLUMNS} FROM "{self.table}" WHERE task_id > ?{where} '
                    "ORDER BY task_id LIMIT ?",
                    (after, *params, batch_size),
                ).fetchall()
            yield from (_decoded(row) for row in rows)
            if len(rows) < batch_size:
                return
            after = rows[-1][0]

    def clear(self) -> None:
        with self._db() as conn:
            conn.execute(f'DELETE FROM "{self.table}"')

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
