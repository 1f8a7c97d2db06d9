"""Results stores, keyed by task id: `open_store(url)` picks the backend from the URL's scheme.

sqlite:///results.db?table=name                      embedded default
postgresql://user@host:5432/db?table=name            PostgreSQL (psycopg 3), value as JSONB
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fleetinfer.errors import ConfigError
from fleetinfer.results.base import ResultStore, TaskResult, TaskStatus

__all__ = ["ResultStore", "TaskResult", "TaskStatus", "open_store"]

_SCHEMES = ("sqlite", "postgresql", "postgres")


def open_store(url: str) -> ResultStore:
    """Open the results store named by `url`; a bad scheme or option raises `ConfigError`."""
    scheme = urlsplit(url).scheme if isinstance(url, str) else ""
    if scheme == "sqlite":
        from fleetinfer.results.backends.sqlite import SqliteResultStore

        return SqliteResultStore.from_url(url)
    if scheme in ("postgresql", "postgres"):
        from fleetinfer.results.backends.postgresql import PostgresResultStore

        return PostgresResultStore.from_url(url)
    raise ConfigError(
        f"results store URL {url!r} has an unknown scheme {scheme!r}: accepted schemes are "
        f"{', '.join(s + '://' for s in _SCHEMES)} (for example sqlite:///results.db)"
    )
