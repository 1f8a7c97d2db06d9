"""SqliteBroker specifics: many processes on one file, WAL, package-data schema, batches."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from importlib import resources
from pathlib import Path
from typing import Any

from fleetinfer.queue import open_broker


def _consume_all(url: str, barrier: Any, out: Any) -> None:
    got: list[str] = []
    with open_broker(url, visibility_timeout_s=60) as broker:
        barrier.wait(60)
        while messages := broker.receive(max_messages=7, wait_s=0.5):
            got += [m.id for m in messages]
            time.sleep(0.01)  # a little work, so the processes overlap
            broker.ack_batch([m.receipt for m in messages[::2]])  # leave some in flight
    out.put(got)


def test_consumers_in_separate_processes_never_share_a_visible_message(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/q.db?queue=jobs"
    with open_broker(url) as producer:
        sent = set(producer.send_batch(list(range(300))))
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_consume_all, args=(url, barrier, out)) for _ in range(4)]
    for proc in procs:
        proc.start()
    per_process = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(30)
    every = [message_id for ids in per_process for message_id in ids]
    assert sorted(every) == sorted(sent)
    assert all(per_process), "every process got a share"


def test_database_is_in_wal_mode_and_schema_ships_as_package_data(tmp_path: Path) -> None:
    schema = resources.files("fleetinfer.queue.backends").joinpath("sqlite_schema.sql")
    assert "CREATE TABLE IF NOT EXISTS messages" in schema.read_text("utf-8")
    with open_broker(f"sqlite:///{tmp_path}/q.db"):
        pass
    with sqlite3.connect(tmp_path / "q.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"messages", "dead_letters"} <= tables


def test_queues_in_one_file_are_separate(tmp_path: Path) -> None:
    with (
        open_broker(f"sqlite:///{tmp_path}/q.db?queue=a") as a,
        open_broker(f"sqlite:///{tmp_path}/q.db?queue=b") as b,
    ):
        a.send("for a")
        assert b.receive() == []
        assert [m.json() for m in a.receive()] == ["for a"]
        assert (a.stats().in_flight, b.stats().pending) == (1, 0)


def test_one_receive_takes_a_batch_and_dead_letters_exhausted_messages_on_the_way(
    tmp_path: Path,
) -> None:
    with open_broker(f"sqlite:///{tmp_path}/q.db", max_receives=1) as broker:
        broker.send_batch(["a", "b", "c"])
        first = broker.receive(max_messages=2)
        broker.release(first[0].receipt)
        batch = broker.receive(max_messages=5)
        assert [m.json() for m in batch] == ["c"]
        assert [d.body for d in broker.dead_letters()] == ['"a"']
