"""Results in PostgreSQL (psycopg 3): one row per task id, value as JSONB, first write wins.

`postgresql://user@host:port/db?table=name`; other query options (sslmode, ...) go to libpq.
The table is created on first use under an advisory lock, so many processes may start at once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from fleetinfer.errors import ConfigError, MissingExtraError, StoreUnavailableError
from fleetinfer.results.base import ResultStore, TaskResult, TaskStatus
from fleetinfer.results.rows import (
    COLUMNS,
    DEFAULT_TABLE,
    check_batch_size,
    check_table_name,
    filter_clause,
    payload_mode,
    result_from_row,
    result_row,
    split_options,
    upsert_clause,
)

if TYPE_CHECKING:
    import psycopg

SCHEMA_SQL = resources.files(__package__).joinpath("postgresql_schema.sql").read_text("utf-8")
CONNECT_TIMEOUT_S = 10


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise MissingExtraError("psycopg", "postgresql", "the PostgreSQL results store") from exc
    return psycopg


@contextmanager
def _translate_psycopg_errors(url: str) -> Iterator[None]:
    driver = _import_psycopg()
    try:
        yield
    except driver.OperationalError as exc:
        raise StoreUnavailableError(
            f"PostgreSQL results store {url!r} cannot be reached: {exc}; check the server is up "
            "and the URL, then retry"
        ) from exc
    except driver.Error as exc:
        raise StoreUnavailableError(f"PostgreSQL results store {url!r} failed: {exc}") from exc


class PostgresResultStore(ResultStore):
    """Results in one PostgreSQL table."""

    def __init__(
        self,
        conninfo: str,
        *,
        table: str = DEFAULT_TABLE,
        url: str | None = None,
        keep_payload: bool = True,
    ):
        self.url = url or conninfo
        self.table = check_table_name(self.url, table)
        self.keep_payload = keep_payload
        self._conninfo = conninfo
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._pid = -1
        with self._db() as conn:
            self._create_table(conn)

    @classmethod
    def from_url(cls, url: str) -> PostgresResultStore:
        """Open `postgresql://user@host:port/db?table=name&payload=full|sha256`."""
        parts = urlsplit(url)
        options, rest = split_options(url, parts.query, ("table", "payload"))
        conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, rest, parts.fragment))
        if not parts.netloc and not parts.path.strip("/"):
            raise ConfigError(
                f"PostgreSQL URL {url!r} names no server or database: expected "
                "postgresql://user@host:5432/dbname?table=name"
            )
        return cls(
            conninfo,
            table=options.get("table", DEFAULT_TABLE),
            url=url,
            keep_payload=payload_mode(url, options) == "full",
        )

    def _sql(self, template: str) -> Any:
        from psycopg import sql

        return sql.SQL(template).format(
            table=sql.Identifier(self.table), index=sql.Identifier(f"{self.table}_by_status")
        )

    def _create_table(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
            conn.execute(self._sql(SCHEMA_SQL))

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed or self._pid != os.getpid():
            driver = _import_psycopg()
            conn: psycopg.Connection[tuple[Any, ...]] = driver.connect(
                self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
            )
            self._conn = conn
            self._pid = os.getpid()
        return self._conn

    @contextmanager
    def _db(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        with self._lock, _translate_psycopg_errors(self.url):
            yield self._connection()

    def put(self, result: TaskResult) -> bool:
        row = result_row(result, keep_payload=self.keep_payload)
        with self._db() as conn:
            cur = conn.execute(
                self._sql(
                    f"INSERT INTO {{table}} ({COLUMNS}) "
                    "VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s::jsonb, %s, %s) "
                    + upsert_clause("{table}")
                ),
                row,
            )
            return cur.rowcount == 1

    def get(self, task_id: str) -> TaskResult | None:
        with self._db() as conn:
            row = conn.execute(
                self._sql(f"SELECT {COLUMNS} FROM {{table}} WHERE task_id = %s"), (task_id,)
            ).fetchone()
        return None if row is None else result_from_row(row, row[3], row[9])

    def count(self, status: TaskStatus | None = None) -> int:
        with self._db() as conn:
            if status is None:
                row = conn.execute(self._sql("SELECT COUNT(*) FROM {table}")).fetchone()
            else:
                row = conn.execute(
                    self._sql("SELECT COUNT(*) FROM {table} WHERE status = %s"),
                    (TaskStatus(status).value,),
                ).fetchone()
        return 0 if row is None else int(row[0])

    def iter_results(
        self,
        *,
        batch_size: int = 1000,
        status: TaskStatus | None = None,
        task_name: str | None = None,
    ) -> Iterator[TaskResult]:
        check_batch_size(batch_size)
        where, params = filter_clause(status, task_name, "%s")
        after = ""
        while True:
            with self._db() as conn:
                rows = conn.execute(
                    self._sql(
                        f"SELECT {COLUMNS} FROM {{table}} WHERE task_id > %s{where} "
                        "ORDER BY task_id LIMIT %s"
                    ),
                    (after, *params, batch_size),
                ).fetchall()
            yield from (result_from_row(row, row[3], row[9]) for row in rows)
            if len(rows) < batch_size:
                return
            after = rows[-1][0]

    def clear(self) -> None:
        with self._db() as conn:
            conn.execute(self._sql("DELETE FROM {table}"))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
