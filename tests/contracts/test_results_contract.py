"""The results-store contract, run against every backend: sqlite and postgresql (real server).

One row per task id, the first success wins (tasks run at least once, so a task may finish twice;
a failure gives way to a later success, as after a dead-letter redrive);
counts by status; iteration in task-id order; many processes writing the same ids leave one row
each.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fleetinfer.errors import ConfigError, InputError
from fleetinfer.payloads import payload_sha256
from fleetinfer.results import ResultStore, TaskResult, TaskStatus, open_store

BACKENDS = ("postgresql", "sqlite")


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path, unique_name: str) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/results.db?table={unique_name}"
        return
    postgres_url: str = request.getfixturevalue("postgres_url")
    yield f"{postgres_url}?table={unique_name}"
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{unique_name}"')


@pytest.fixture
def store(store_url: str) -> Iterator[ResultStore]:
    with open_store(store_url) as opened:
        yield opened


def result(task_id: str, status: TaskStatus = TaskStatus.SUCCEEDED, **fields: Any) -> TaskResult:
    return TaskResult(task_id=task_id, task_name="detect_change", status=status, **fields)


def test_first_write_wins_and_the_second_reports_it_changed_nothing(store: ResultStore) -> None:
    first = result("seg-1", value={"changed": True}, worker="node-a/3", attempts=1)
    assert store.put(first) is True
    assert store.put(result("seg-1", TaskStatus.DEAD, error="late duplicate")) is False
    assert store.get("seg-1") == first
    assert store.count() == 1


def test_a_failure_gives_way_to_a_later_success_but_never_the_reverse(store: ResultStore) -> None:
    assert store.put(result("seg-2", TaskStatus.DEAD, error="boom", attempts=3)) is True
    assert store.put(result("seg-2", TaskStatus.REJECTED, error="again")) is False
    success = result("seg-2", value={"changed": False}, attempts=1, worker="node-b/1")
    assert store.put(success) is True  # redriven from the dead-letter queue, then succeeded
    assert store.get("seg-2") == success
    assert store.put(result("seg-2", value={"changed": True})) is False
    assert store.get("seg-2") == success
    assert store.count() == 1


def test_every_field_round_trips(store: ResultStore) -> None:
    stored = result(
        "seg-ü",
        TaskStatus.REJECTED,
        value={"score": 0.125, "labels": ["lane", "sign"], "nested": {"none": None}, "s": "é"},
        error="Reject: no drives",
        attempts=3,
        worker="host/17",
        started_at=1700000000.25,
        finished_at=1700000002.75,
    )
    store.put(stored)
    got = store.get("seg-ü")
    assert got == stored
    assert got is not None
    assert got.duration_s == 2.5


def test_get_of_an_unknown_task_is_none(store: ResultStore) -> None:
    assert store.get("never-ran") is None


def test_count_by_status(store: ResultStore) -> None:
    statuses = [TaskStatus.SUCCEEDED] * 3 + [TaskStatus.REJECTED] * 2 + [TaskStatus.DEAD]
    for n, status in enumerate(statuses):
        store.put(result(f"t{n}", status))
    assert store.count() == 6
    assert store.count(TaskStatus.SUCCEEDED) == 3
    assert store.count(TaskStatus.REJECTED) == 2
    assert store.count(TaskStatus.DEAD) == 1


def test_iteration_yields_every_result_in_task_id_order_across_pages(
    store: ResultStore,
) -> None:
    ids = ["b", "a", "e", "c", "d", "B", "a1"]
    for task_id in ids:
        store.put(result(task_id, value=task_id))
    got = list(store.iter_results(batch_size=2))
    assert [r.task_id for r in got] == sorted(ids)
    assert [r.value for r in got] == sorted(ids)
    with pytest.raises(InputError):
        list(store.iter_results(batch_size=0))


def test_clear_deletes_every_result(store: ResultStore) -> None:
    store.put(result("x"))
    store.clear()
    assert (store.count(), store.get("x")) == (0, None)
    assert store.put(result("x")) is True


def test_values_json_cannot_hold_and_empty_ids_are_refused(store: ResultStore) -> None:
    with pytest.raises(InputError, match="not JSON-serializable"):
        store.put(result("x", value={1, 2}))
    with pytest.raises(InputError, match="not JSON-serializable"):
        store.put(result("x", value=float("inf")))
    with pytest.raises(InputError, match="task_id"):
        store.put(result(""))
    with pytest.raises(InputError, match="status"):
        store.put(TaskResult(task_id="x", task_name="t", status="finished"))  # type: ignore[arg-type]
    assert store.count() == 0


def test_unknown_option_or_bad_table_name_is_a_config_error(store_url: str) -> None:
    base = store_url.split("?")[0]
    with pytest.raises(ConfigError, match="table"):
        open_store(f"{base}?table=bad-name;drop")


def _write_all(url: str, worker: str, ids: list[str], start: Any) -> int:
    start.wait(30)
    with open_store(url) as store:
        return sum(store.put(result(task_id, worker=worker, value=worker)) for task_id in ids)


def test_concurrent_writers_of_the_same_ids_from_several_processes_leave_one_row_each(
    store: ResultStore, store_url: str
) -> None:
    ids = [f"seg-{n:03d}" for n in range(60)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(4) as pool:
            pending = [
                pool.apply_async(_write_all, (store_url, f"w{i}", ids, start)) for i in range(4)
            ]
            start.set()
            created = [p.get(120) for p in pending]
    assert sum(created) == len(ids)
    assert store.count() == len(ids)
    rows = list(store.iter_results())
    assert [r.task_id for r in rows] == ids
    assert all(r.value == r.worker for r in rows)  # each row is one writer's whole result


def test_a_result_keeps_its_payload_and_the_payloads_sha256(store: ResultStore) -> None:
    payload = {"path": "segments/ü-7.npz", "window": [1, 2]}
    store.put(result("seg-7", value={"changed": True}, payload=payload))
    got = store.get("seg-7")
    assert got is not None
    assert got.payload == payload
    assert got.payload_sha256 == payload_sha256(payload)
    assert got.payload_sha256 == payload_sha256({"window": [1, 2], "path": "segments/ü-7.npz"})


def test_a_store_opened_with_payload_sha256_keeps_only_the_hash(store_url: str) -> None:
    with open_store(f"{store_url}&payload=sha256") as store:
        store.put(result("seg-8", payload={"path": "b.npz"}))
        got = store.get("seg-8")
    assert got is not None
    assert (got.payload, got.payload_sha256) == (None, payload_sha256({"path": "b.npz"}))
    with pytest.raises(ConfigError, match="payload=full"):
        open_store(f"{store_url}&payload=everything")


def test_iteration_filters_by_status_and_by_task(store: ResultStore) -> None:
    store.put(result("a", TaskStatus.SUCCEEDED))
    store.put(result("b", TaskStatus.DEAD))
    store.put(TaskResult(task_id="c", task_name="other", status=TaskStatus.SUCCEEDED))
    assert [r.task_id for r in store.iter_results(status=TaskStatus.SUCCEEDED)] == ["a", "c"]
    assert [r.task_id for r in store.iter_results(task_name="detect_change")] == ["a", "b"]
    both = store.iter_results(status=TaskStatus.SUCCEEDED, task_name="other", batch_size=1)
    assert [r.task_id for r in both] == ["c"]
    with pytest.raises(InputError, match="succeeded"):
        list(store.iter_results(status="finished"))  # type: ignore[arg-type]


OLD_TABLE = {  # the table as stores made it before payloads were kept
    "sqlite": "CREATE TABLE {t} (task_id TEXT PRIMARY KEY, task_name TEXT NOT NULL, "
    "status TEXT NOT NULL, value TEXT, error TEXT, attempts INTEGER NOT NULL, "
    "worker TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL NOT NULL, "
    "stored_at REAL NOT NULL)",
    "postgresql": "CREATE TABLE {t} (task_id TEXT PRIMARY KEY, task_name TEXT NOT NULL, "
    "status TEXT NOT NULL, value JSONB, error TEXT, attempts INTEGER NOT NULL, "
    "worker TEXT NOT NULL, started_at DOUBLE PRECISION NOT NULL, "
    "finished_at DOUBLE PRECISION NOT NULL, stored_at TIMESTAMPTZ NOT NULL DEFAULT now())",
}
OLD_ROW = "INSERT INTO {t} VALUES ('old-1', 'detect_change', 'succeeded', '[1]', NULL, 1, 'w', 1, 2, {now})"


def test_a_table_made_before_payloads_were_kept_is_migrated_and_keeps_its_rows(
    store_url: str, unique_name: str
) -> None:
    table = f'"{unique_name}"'
    if store_url.startswith("sqlite"):
        import sqlite3

        path = store_url.removeprefix("sqlite:///").split("?")[0]
        with sqlite3.connect(path) as conn:
            conn.execute(OLD_TABLE["sqlite"].format(t=table))
            conn.execute(OLD_ROW.format(t=table, now=3))
        conn.close()
    else:
        import psycopg

        with psycopg.connect(store_url.split("?")[0], autocommit=True) as conn:
            conn.execute(OLD_TABLE["postgresql"].format(t=table))  # type: ignore[call-overload]
            conn.execute(OLD_ROW.format(t=table, now="now()"))  # type: ignore[call-overload]
    with open_store(store_url) as store:
        old = store.get("old-1")
        assert old is not None
        assert (old.value, old.payload, old.payload_sha256, old.models) == ([1], None, None, "")
        store.put(result("new-1", payload={"n": 1}))
        new = store.get("new-1")
        assert new is not None
        assert new.payload == {"n": 1}


def test_a_result_keeps_the_model_versions_that_answered_it(store_url: str) -> None:
    with open_store(store_url) as store:
        store.put(replace(result("t-models"), models="cdnet@2,cdnet-l@1"))
        got = store.get("t-models")
        assert got is not None
        assert got.models == "cdnet@2,cdnet-l@1"
