"""Hostile queue messages reach a real node on the sqlite backend: each is dead-lettered on its
first receive (no worker crash, no redelivery), and the good tasks around them succeed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fleetinfer.cli.common import ExitCode
from fleetinfer.queue import open_broker
from fleetinfer.results import TaskStatus, open_store
from fleetinfer.task import send_tasks
from tests.apps.harness import NodeProcess

DEEP = 10_000


def envelope_with(payload_text: str) -> str:
    return '{"v": 1, "id": "hostile", "task": "square", "payload": ' + payload_text + "}"


HOSTILE = [
    "[" * DEEP + "]" * DEEP,  # the probe's message: about 10 KB of nested brackets
    envelope_with("[" * DEEP + "]" * DEEP),
    envelope_with('{"a": ' * DEEP + "1" + "}" * DEEP),
    envelope_with("1" + "0" * 5000),  # a huge number
    envelope_with("1e999"),
    '{"v": 1, "id": "\\udc00", "task": "square"}',  # an escaped lone surrogate
    "[1, 2, 3]",  # not an object
    '{"v": "1", "id": 7, "task": ["square"]}',  # wrong field types
]


def test_hostile_messages_are_dead_lettered_on_their_first_receive(tmp_path: Path) -> None:
    queue_url = f"sqlite:///{tmp_path}/queue.db?max_receives=10"
    results_url = f"sqlite:///{tmp_path}/results.db"
    with open_broker(queue_url) as broker, open_store(results_url) as store:
        for body in HOSTILE:
            broker.send_raw(body)
        # bytes that are not UTF-8, written into the queue's file by something else
        placeholder = broker.send_raw("{}")
        with sqlite3.connect(tmp_path / "queue.db") as conn:
            conn.execute(
                "UPDATE messages SET body = CAST(X'7b2276223a312c226964223a22ff227d' AS TEXT) "
                "WHERE id = ?",
                (placeholder,),
            )
        conn.close()
        good = send_tasks(broker, "square", [{"x": i} for i in range(3)])
        node = NodeProcess(
            "tests.apps.jobs:app", queue_url, results_url, "--workers", "1",
            "--exit-when-empty", log_path=tmp_path / "node.log",
        )  # fmt: skip
        try:
            assert node.wait(60) == ExitCode.DEAD_LETTERS, node.log()  # dead-lettered: 8
        finally:
            node.close()
        stopped = node.event("stopped")
        dead = broker.dead_letters()
        assert len(dead) == len(HOSTILE) + 1, [d.reason for d in dead]
        assert all(d.reason.startswith("MalformedMessageError") for d in dead), dead
        assert all(d.receive_count == 1 for d in dead), [d.receive_count for d in dead]
        assert stopped["restarts"] == 0
        assert stopped["outcomes"]["malformed"] == len(HOSTILE) + 1
        assert '{"v":1,"id":"\ufffd"}' in {d.body for d in dead}
        assert [store.get(i).status for i in good] == [TaskStatus.SUCCEEDED] * 3  # type: ignore[union-attr]
