"""The embedded SQLite file shared by the queue and results backends: opened by many processes."""

from __future__ import annotations

import multiprocessing
from multiprocessing.synchronize import Barrier
from pathlib import Path

from fleetinfer.sqlite import connect_wal

SCHEMA = "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT);"
PROCESSES, TRIALS = 8, 10


def _open(path: str, start: Barrier, failures: multiprocessing.Queue[str]) -> None:
    start.wait()
    try:
        connect_wal(Path(path), what="test store", schema_sql=SCHEMA).close()
    except Exception as exc:
        failures.put(repr(exc))


def test_many_processes_creating_the_same_database_at_once_all_open_it(tmp_path: Path) -> None:
    """A node's workers open the results file together at start-up; switching a fresh file to
    WAL used to fail some of them with "database is locked" (about 3 % of openers here)."""
    fork = multiprocessing.get_context("fork")
    failures: multiprocessing.Queue[str] = fork.Queue()
    for trial in range(TRIALS):
        start = fork.Barrier(PROCESSES)
        path = str(tmp_path / f"r{trial}.db")
        openers = [
            fork.Process(target=_open, args=(path, start, failures)) for _ in range(PROCESSES)
        ]
        for p in openers:
            p.start()
        for p in openers:
            p.join(60)
            assert p.exitcode == 0
    seen = []
    while not failures.empty():
        seen.append(failures.get())
    assert seen == []
