"""What the embedded SQLite backends share: one WAL database file opened the same way."""

from __future__ import annotations

import sqlite3
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
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(schema_sql)
    return conn
