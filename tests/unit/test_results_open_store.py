"""open_store: URL schemes, options, unreachable servers, missing driver."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from fleetinfer.errors import ConfigError, MissingExtraError, StoreUnavailableError
from fleetinfer.results import open_store
from fleetinfer.results.backends.postgresql import PostgresResultStore
from fleetinfer.results.backends.sqlite import SqliteResultStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_unknown_scheme_is_a_config_error_naming_the_accepted_ones() -> None:
    with pytest.raises(ConfigError, match=r"mysql.*sqlite://.*postgresql://"):
        open_store("mysql://h/db")


def test_sqlite_url_picks_the_sqlite_store_and_default_table(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/r.db") as store:
        assert isinstance(store, SqliteResultStore)
        assert store.table == "fleetinfer_results"


def test_sqlite_unknown_option_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown options"):
        open_store(f"sqlite:///{tmp_path}/r.db?tabel=x")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_sqlite_url_without_a_file_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="names no file"):
        open_store(url)


def test_postgresql_url_keeps_driver_options_and_takes_the_table(
    postgres_url: str, unique_name: str
) -> None:
    with open_store(f"{postgres_url}?connect_timeout=5&table={unique_name}") as store:
        assert isinstance(store, PostgresResultStore)
        assert store.table == unique_name
        assert store.count() == 0
        store.clear()
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP TABLE "{unique_name}"')


def test_unreachable_postgresql_is_a_store_unavailable_error() -> None:
    with pytest.raises(StoreUnavailableError, match="cannot be reached"):
        open_store(f"postgresql://postgres@127.0.0.1:{_free_port()}/test")


def test_missing_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(MissingExtraError, match=r"fleetinfer\[postgresql\]"):
        open_store("postgresql://postgres@127.0.0.1:5432/test")
