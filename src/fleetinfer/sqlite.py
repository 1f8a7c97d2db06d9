"""What the embedded SQLite backends share: one WAL database file opened the same way."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from fleetinfer.errors import ConfigError

BUSY_TIMEOUT_S = 30.0


def connect_wal(path: Path, *, what: str, schema_sql: str) -> sqlite3.Connection:
    """Open (creating folder and file) `path` in WAL mode with autocommit and a busy timeout,
    then apply `schema_sql`. `what` names the backend in errors. sqlite3 errors propagate:
    callers translate them into their own unavailable-error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{what}: cannot create the folder {path.parent} ({exc.strerror}): "
            "point the URL at a writable path"
        ) from exc
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        _while_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
        conn.execute("PRAGMA synchronous=NORMAL")
        _while_locked(lambda: conn.executescript(schema_sql))
    except BaseException:
        conn.close()
        raise
    return conn


def _while_locked(statement: Callable[[], object]) -> None:
    """Run `statement`, again while the file is locked, up to the busy timeout. Switching a
    new file to WAL while other processes open it too fails at once with "database is locked"
    (SQLite does not wait on its busy handler there: 8 of 240 concurrent openers did)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    pause_s = 0.001
    while True:
        try:
            statement()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause_s)
        pause_s = min(pause_s * 2, 0.1)
