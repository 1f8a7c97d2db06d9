"""The embedded broker: one SQLite file in WAL mode, safe under many processes.

`sqlite:///relative/path.db?queue=name` (three slashes: relative to the working directory) or
`sqlite:////absolute/path.db` (four slashes). The queue name defaults to `default`; many queues
share one file. Every write runs in a `BEGIN IMMEDIATE` transaction under a busy timeout, so
concurrent consumers serialise on the write lock and never take the same visible message twice.
A receive takes a whole batch in one transaction; `ack_batch` acks many receipts in one.
Long polling is a sleeping poll with a short backoff (5 ms doubling to 50 ms).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from fleetinfer.errors import BrokerUnavailableError, ConfigError, InputError
from fleetinfer.queue.base import (
    DEFAULT_MAX_RECEIVES,
    DEFAULT_VISIBILITY_TIMEOUT_S,
    Broker,
    DeadLetter,
    Message,
    QueueStats,
    check_body_size,
    check_dedup_ids,
    check_delay,
    check_receive_args,
    long_poll,
    raise_if_stale,
)
from fleetinfer.queue.url import BrokerUrl, check_settings
from fleetinfer.sqlite import connect_wal

SCHEMA_SQL = resources.files(__package__).joinpath("sqlite_schema.sql").read_text("utf-8")

_Row = tuple[int, str, str, int, float]  # seq, id, body, receive_count, sent_at


def _text(data: bytes) -> str:
    """TEXT as str; bytes that are not UTF-8 (written by something else) stay as surrogates."""
    return data.decode("utf-8", "surrogateescape")


def _stored(text: str) -> str | bytes:
    """What `_text` gave, as it was stored (bound through `CAST(? AS TEXT)`)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")
    return text


def _shown(text: str) -> str:
    """Printable text: bytes that were not UTF-8 become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def sqlite_path_from_url(url: str, path: str) -> Path:
    """`sqlite:///rel.db` -> `rel.db`; `sqlite:////abs.db` -> `/abs.db` (SQLAlchemy's rule)."""
    if not path.startswith("/") or len(path) < 2:
        raise ConfigError(
            f"SQLite URL {url!r} names no file: expected sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    if path[1:] == ":memory:":
        raise ConfigError(
            f"SQLite URL {url!r} is in memory, which other processes cannot share: name a file"
        )
    return Path(path[1:])


@contextmanager
def _translate_sqlite_errors(url: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise BrokerUnavailableError(
            f"SQLite broker {url!r} failed: {exc}; check the file is writable and not on a "
            "network filesystem, then retry"
        ) from exc
    except sqlite3.DatabaseError as exc:
        raise BrokerUnavailableError(f"SQLite broker {url!r} failed: {exc}") from exc


def _split_receipt(receipt: str) -> tuple[int, str]:
    seq, sep, token = receipt.partition(":")
    if not sep or not seq.isdigit() or not token:
        raise InputError(
            f"{receipt!r} is not a receipt of the SQLite broker: expected '<seq>:<token>' as "
            "returned in Message.receipt"
        )
    return int(seq), token


def add_dedup_columns(conn: sqlite3.Connection) -> None:
    """Migrate a file made before deduplication: add `dedup_id` to both tables, then the
    unique index that lets one live message per queue hold a dedup id."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table in ("messages", "dead_letters"):
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if "dedup_id" not in columns:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN dedup_id TEXT")
        conn.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS messages_by_dedup_id ON messages (queue, dedup_id) "
            "WHERE dedup_id IS NOT NULL"
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SqliteBroker(Broker):
    """One queue in one SQLite database file (and its dead-letter table in the same file)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        queue: str = "default",
        visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
        max_receives: int = DEFAULT_MAX_RECEIVES,
        url: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.queue = queue
        self.url = url or f"sqlite:///{self.path}?queue={queue}"
        check_settings(self.url, visibility_timeout_s, max_receives)
        if not queue:
            raise ConfigError(f"SQLite broker {self.url!r}: the queue name must not be empty")
        self.visibility_timeout_s = visibility_timeout_s
        self.max_receives = max_receives
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._connection()

    @classmethod
    def from_url(
        cls, url: str, *, visibility_timeout_s: float | None = None, max_receives: int | None = None
    ) -> SqliteBroker:
        """Open `sqlite:///path.db?queue=name&visibility_timeout_s=30&max_receives=5`."""
        parsed = BrokerUrl.parse(
            url,
            accepted_keys=("queue",),
            visibility_timeout_s=visibility_timeout_s,
            max_receives=max_receives,
        )
        return cls(
            sqlite_path_from_url(url, parsed.parts.path),
            queue=parsed.options.get("queue", "default"),
            visibility_timeout_s=parsed.visibility_timeout_s,
            max_receives=parsed.max_receives,
            url=url,
        )

    # -- connection --------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """This process's connection; a forked child opens its own."""
        if self._conn is None or self._pid != os.getpid():
            self._conn = self._connect()
            self._pid = os.getpid()
        return self._conn

    def _connect(self) -> sqlite3.Connection:
        with _translate_sqlite_errors(self.url):
            conn = connect_wal(self.path, what=f"SQLite broker {self.url!r}", schema_sql=SCHEMA_SQL)
            try:
                add_dedup_columns(conn)
            except BaseException:
                conn.close()
                raise
        conn.text_factory = _text  # a row written by anyone: receive it, the worker refuses it
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One `BEGIN IMMEDIATE` transaction: committed on success, rolled back on any error."""
        with self._lock, _translate_sqlite_errors(self.url):
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _translate_sqlite_errors(self.url):
            yield self._connection()

    # -- send --------------------------------------------------------------------------------

    def send_raw_batch(
        self,
        bodies: Sequence[str],
        *,
        delay_s: float = 0.0,
        dedup_ids: Sequence[str] | None = None,
    ) -> list[str]:
        check_delay(delay_s)
        check_dedup_ids(bodies, dedup_ids)
        for body in bodies:
            check_body_size(body)
        now = time.time()
        ids = [uuid.uuid4().hex for _ in bodies]
        with self._write() as conn:
            if dedup_ids is not None:
                return [
                    self._insert_unless_queued(conn, i, b, d, now + delay_s)
                    for i, b, d in zip(ids, bodies, dedup_ids, strict=True)
                ]
            conn.executemany(
                "INSERT INTO messages (queue, id, body, sent_at, visible_at) VALUES (?,?,?,?,?)",
                [(self.queue, i, b, now, now + delay_s) for i, b in zip(ids, bodies, strict=True)],
            )
        return ids

    def _insert_unless_queued(
        self, conn: sqlite3.Connection, message_id: str, body: str, dedup_id: str, visible_at: float
    ) -> str:
        """Insert unless a live message holds `dedup_id`; returns the id of the message queued."""
        cur = conn.execute(
            "INSERT OR IGNORE INTO messages (queue, id, body, sent_at, visible_at, dedup_id) "
            "VALUES (?,?,?,?,?,?)",
            (self.queue, message_id, body, time.time(), visible_at, dedup_id),
        )
        if cur.rowcount == 1:
            return message_id
        row = conn.execute(
            "SELECT id FROM messages WHERE queue = ? AND dedup_id = ?", (self.queue, dedup_id)
        ).fetchone()
        return str(row[0])

    # -- receive -----------------------------------------------------------------------------

    def receive(
        self,
        *,
        max_messages: int = 1,
        wait_s: float = 0.0,
        visibility_timeout_s: float | None = None,
    ) -> list[Message]:
        check_receive_args(max_messages, wait_s, visibility_timeout_s)
        timeout_s = visibility_timeout_s or self.visibility_timeout_s
        return long_poll(lambda: self._receive_once(max_messages, timeout_s), wait_s)

    def _receive_once(self, max_messages: int, timeout_s: float) -> list[Message]:
        if not self._any_visible():
            return []
        with self._write() as conn:
            now = time.time()
            taken: list[Message] = []
            while len(taken) < max_messages:
                rows = self._visible_rows(conn, now, max_messages - len(taken))
                if not rows:
                    break
                live = [r for r in rows if r[3] < self.max_receives]
                self._move_to_dead(conn, [r for r in rows if r[3] >= self.max_receives], now)
                taken.extend(self._lease(conn, live, now + timeout_s))
            return taken

    def _any_visible(self) -> bool:
        """A read without the write lock, so idle pollers do not queue on it."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT 1 FROM messages WHERE queue = ? AND visible_at <= ? LIMIT 1",
                (self.queue, time.time()),
            ).fetchone()
        return row is not None

    def _visible_rows(self, conn: sqlite3.Connection, now: float, limit: int) -> list[_Row]:
        return conn.execute(
            "SELECT seq, id, body, receive_count, sent_at FROM messages "
            "WHERE queue = ? AND visible_at <= ? ORDER BY visible_at LIMIT ?",
            (self.queue, now, limit),
        ).fetchall()

    def _move_to_dead(self, conn: sqlite3.Connection, rows: list[_Row], now: float) -> None:
        reason = f"exceeded max_receives={self.max_receives}"
        conn.executemany(
            "INSERT INTO dead_letters "
            "(queue, id, body, reason, receive_count, sent_at, dead_at, dedup_id) "
            "SELECT queue, id, body, ?, receive_count, sent_at, ?, dedup_id FROM messages "
            "WHERE seq = ?",
            [(reason, now, r[0]) for r in rows],
        )
        conn.executemany("DELETE FROM messages WHERE seq = ?", [(r[0],) for r in rows])

    def _lease(self, conn: sqlite3.Connection, rows: list[_Row], until: float) -> list[Message]:
        tokens = [secrets.token_hex(8) for _ in rows]
        conn.executemany(
            "UPDATE messages SET receipt = ?, visible_at = ?, receive_count = receive_count + 1 "
            "WHERE seq = ?",
            [(t, until, r[0]) for t, r in zip(tokens, rows, strict=True)],
        )
        return [
            Message(id=r[1], body=r[2], receipt=f"{r[0]}:{t}", receive_count=r[3] + 1, sent_at=r[4])
            for t, r in zip(tokens, rows, strict=True)
        ]

    # -- settle ------------------------------------------------------------------------------

    def ack(self, receipt: str) -> None:
        self.ack_batch([receipt])

    def ack_batch(self, receipts: Sequence[str]) -> None:
        """Ack many receipts in one transaction; stale ones raise together after the rest."""
        keys = [_split_receipt(r) for r in receipts]
        stale: list[str] = []
        with self._write() as conn:
            now = time.time()
            for receipt, (seq, token) in zip(receipts, keys, strict=True):
                cur = conn.execute(
                    "DELETE FROM messages WHERE seq = ? AND receipt = ? AND visible_at > ?",
                    (seq, token, now),
                )
                if cur.rowcount == 0:
                    stale.append(receipt)
        raise_if_stale(stale)

    def release(self, receipt: str, *, delay_s: float = 0.0) -> None:
        check_delay(delay_s)
        self._update_held(receipt, "receipt = NULL, visible_at = ?", delay_s)

    def extend_visibility(self, receipt: str, timeout_s: float) -> None:
        check_receive_args(1, 0.0, timeout_s)
        self._update_held(receipt, "visible_at = ?", timeout_s)

    def _update_held(self, receipt: str, assignment: str, from_now_s: float) -> None:
        seq, token = _split_receipt(receipt)
        with self._write() as conn:
            now = time.time()
            cur = conn.execute(
                f"UPDATE messages SET {assignment} WHERE seq = ? AND receipt = ? AND visible_at > ?",
                (now + from_now_s, seq, token, now),
            )
            if cur.rowcount == 0:
                raise_if_stale([receipt])

    def dead_letter(self, receipt: str, reason: str) -> None:
        seq, token = _split_receipt(receipt)
        with self._write() as conn:
            now = time.time()
            cur = conn.execute(
                "INSERT INTO dead_letters "
                "(queue, id, body, reason, receive_count, sent_at, dead_at, dedup_id) "
                "SELECT queue, id, body, ?, receive_count, sent_at, ?, dedup_id FROM messages "
                "WHERE seq = ? AND receipt = ? AND visible_at > ?",
                (reason, now, seq, token, now),
            )
            if cur.rowcount == 0:
                raise_if_stale([receipt])
            conn.execute("DELETE FROM messages WHERE seq = ?", (seq,))

    # -- dead letters, stats -----------------------------------------------------------------

    def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, body, reason, receive_count, dead_at FROM dead_letters "
                "WHERE queue = ? ORDER BY seq LIMIT ?",
                (self.queue, limit),
            ).fetchall()
        return [DeadLetter(_shown(i), _shown(body), *rest) for i, body, *rest in rows]

    def redrive(self, *, limit: int | None = None) -> int:
        with self._write() as conn:
            now = time.time()
            rows = conn.execute(
                "SELECT seq, id, body, sent_at, dedup_id FROM dead_letters WHERE queue = ? "
                "ORDER BY seq LIMIT ?",
                (self.queue, -1 if limit is None else limit),
            ).fetchall()
            conn.executemany(  # a live message with the same dedup id stands for this one
                "INSERT OR IGNORE INTO messages (queue, id, body, sent_at, visible_at, dedup_id) "
                "VALUES (?,CAST(? AS TEXT),CAST(? AS TEXT),?,?,?)",
                [(self.queue, _stored(r[1]), _stored(r[2]), r[3], now, r[4]) for r in rows],
            )
            conn.executemany("DELETE FROM dead_letters WHERE seq = ?", [(r[0],) for r in rows])
        return len(rows)

    def stats(self) -> QueueStats:
        with self._read() as conn:
            now = time.time()
            visible, in_flight, delayed, oldest_sent_at = conn.execute(
                "SELECT COALESCE(SUM(visible_at <= ?1), 0), "
                "COALESCE(SUM(visible_at > ?1 AND receipt IS NOT NULL), 0), "
                "COALESCE(SUM(visible_at > ?1 AND receipt IS NULL), 0), "
                "MIN(CASE WHEN visible_at <= ?1 THEN sent_at END) "
                "FROM messages WHERE queue = ?2",
                (now, self.queue),
            ).fetchone()
            (dead,) = conn.execute(
                "SELECT COUNT(*) FROM dead_letters WHERE queue = ?", (self.queue,)
            ).fetchone()
        age_s = 0.0 if oldest_sent_at is None else max(0.0, now - oldest_sent_at)
        return QueueStats(
            visible=visible,
            in_flight=in_flight,
            delayed=delayed,
            dead=dead,
            oldest_visible_age_s=age_s,
        )

    def purge(self) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM messages WHERE queue = ?", (self.queue,))
            conn.execute("DELETE FROM dead_letters WHERE queue = ?", (self.queue,))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
