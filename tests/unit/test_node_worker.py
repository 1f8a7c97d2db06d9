"""The worker loop in-process, on a real SQLite broker and store: every outcome, step by step."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetinfer.node.events import MemoryEvents
from fleetinfer.node.worker import Outcome, Worker, WorkerConfig, backoff_s
from fleetinfer.queue import Broker, open_broker
from fleetinfer.results import ResultStore, TaskStatus, open_store
from fleetinfer.task import Envelope
from tests.helpers.tiny_models import affine_repository


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with open_broker(f"sqlite:///{tmp_path}/q.db?visibility_timeout_s=5&max_receives=5") as b:
        yield b


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultStore]:
    with open_store(f"sqlite:///{tmp_path}/r.db") as s:
        yield s


def _worker(broker: Broker, store: ResultStore, **options: object) -> Worker:
    config = WorkerConfig(
        target="tests.apps.jobs:app",
        queue_url=broker.url,
        results_url=store.url,
        wait_s=0.0,
        backoff_base_s=0.0,
        **options,  # type: ignore[arg-type]
    )
    return Worker(config, broker=broker, store=store, events=MemoryEvents())


def _send(broker: Broker, task: str, payload: object) -> str:
    envelope = Envelope.new(task, payload)
    broker.send_raw(envelope.encode())
    return envelope.id


def test_success_stores_the_value_then_acks(broker: Broker, store: ResultStore) -> None:
    task_id = _send(broker, "square", {"x": 7})
    assert _worker(broker, store).step() is Outcome.SUCCEEDED
    result = store.get(task_id)
    assert result is not None
    assert result.status is TaskStatus.SUCCEEDED
    assert result.value["square"] == 49
    assert broker.stats().pending == 0


def test_no_message_is_no_outcome(broker: Broker, store: ResultStore) -> None:
    assert _worker(broker, store).step() is None


def test_failing_task_is_released_then_dead_after_its_max_receives(
    broker: Broker, store: ResultStore
) -> None:
    task_id = _send(broker, "always_fails", "segment-9")
    worker = _worker(broker, store)
    outcomes = [worker.step() for _ in range(3)]
    assert outcomes == [Outcome.FAILED, Outcome.FAILED, Outcome.DEAD]
    result = store.get(task_id)
    assert result is not None
    assert result.status is TaskStatus.DEAD
    assert result.attempts == 3
    assert result.error is not None
    assert "cannot process 'segment-9' (receive 3)" in result.error
    [dead] = broker.dead_letters()
    assert dead.reason == "ValueError: cannot process 'segment-9' (receive 3)"
    assert broker.stats().pending == 0


def test_retry_releases_without_storing_and_the_next_receive_succeeds(
    broker: Broker, store: ResultStore
) -> None:
    task_id = _send(broker, "retry_once", None)
    worker = _worker(broker, store)
    assert worker.step() is Outcome.RETRIED
    assert store.get(task_id) is None
    assert worker.step() is Outcome.SUCCEEDED
    result = store.get(task_id)
    assert result is not None
    assert result.value == {"receives": 2}


def test_reject_stores_rejected_and_dead_letters_with_the_reason(
    broker: Broker, store: ResultStore
) -> None:
    task_id = _send(broker, "reject", 42)
    assert _worker(broker, store).step() is Outcome.REJECTED
    result = store.get(task_id)
    assert result is not None
    assert result.status is TaskStatus.REJECTED
    assert result.error == "payload 42 is not a road segment"
    assert [d.reason for d in broker.dead_letters()] == ["payload 42 is not a road segment"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{oops", "MalformedMessageError: message is not a task envelope"),
        (
            '{"v": 1, "id": "t1", "task": "no_such_task", "payload": 1}',
            "UnknownTaskError: app 'jobs'",
        ),
        (
            json.dumps({"v": 1, "id": "t2", "task": "square", "payload": "x" * 3000}),
            "PayloadTooLargeError",
        ),
    ],
)
def test_bad_messages_are_dead_lettered_with_a_reason_and_the_worker_goes_on(
    broker: Broker, store: ResultStore, body: str, reason: str
) -> None:
    broker.send_raw(body)
    good_id = _send(broker, "square", {"x": 2})
    worker = _worker(broker, store, max_message_bytes=2048)
    assert worker.step() is Outcome.MALFORMED
    assert worker.step() is Outcome.SUCCEEDED
    [dead] = broker.dead_letters()
    assert dead.reason.startswith(reason)
    assert store.get(good_id) is not None
    assert store.count() == 1


def test_a_task_that_already_succeeded_is_acked_without_running_again(
    broker: Broker, store: ResultStore
) -> None:
    envelope = Envelope.new("square", {"x": 3})
    broker.send_raw(envelope.encode())
    broker.send_raw(envelope.encode())
    worker = _worker(broker, store)
    assert [worker.step(), worker.step()] == [Outcome.SUCCEEDED, Outcome.DUPLICATE]
    assert store.count() == 1
    assert broker.stats().pending == 0


def test_task_over_its_timeout_fails_with_a_timeout_error(
    broker: Broker, store: ResultStore
) -> None:
    _send(broker, "too_slow", None)
    started = time.monotonic()
    assert _worker(broker, store).step() is Outcome.FAILED
    assert time.monotonic() - started < 2.0


def test_a_non_json_return_value_is_a_failure_that_names_the_type(
    broker: Broker, store: ResultStore
) -> None:
    task_id = _send(broker, "not_json", None)
    worker = _worker(open_broker(broker.url, max_receives=1), store)
    assert worker.step() is Outcome.DEAD
    result = store.get(task_id)
    assert result is not None
    assert result.error is not None
    assert "returned a object, which is not JSON" in result.error


def test_a_task_asking_for_a_model_the_node_lacks_is_released_for_another_node(
    broker: Broker, store: ResultStore, tmp_path: Path
) -> None:
    task_id = _send(broker, "needs_model", None)  # asks for "cdnet"
    no_repository = _worker(broker, store)
    other_models = _worker(broker, store, models=str(affine_repository(tmp_path / "models")))
    assert [no_repository.step(), other_models.step()] == [Outcome.UNSERVED, Outcome.UNSERVED]
    assert store.get(task_id) is None
    stats = broker.stats()
    assert (stats.visible + stats.delayed, stats.dead) == (1, 0)
    assert [e["outcome"] for e in other_models.events.named("task")] == ["unserved"]  # type: ignore[attr-defined]


def test_events_report_each_outcome_with_its_duration(broker: Broker, store: ResultStore) -> None:
    _send(broker, "square", {"x": 1})
    worker = _worker(broker, store)
    worker.step()
    assert isinstance(worker.events, MemoryEvents)
    [event] = worker.events.named("task")
    assert event["outcome"] == "succeeded"
    assert event["task"] == "square"
    assert event["duration_s"] >= 0.0


def test_backoff_doubles_from_its_base_up_to_its_cap() -> None:
    assert [backoff_s(n, base_s=1.0, max_s=5.0) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 5, 5]
    assert backoff_s(100, base_s=10.0, max_s=1e9) == 900.0


def test_retry_on_the_last_allowed_receive_makes_the_task_dead(
    broker: Broker, store: ResultStore
) -> None:
    task_id = _send(broker, "always_retry", None)
    worker = _worker(broker, store)
    assert [worker.step(), worker.step()] == [Outcome.RETRIED, Outcome.DEAD]
    result = store.get(task_id)
    assert result is not None
    assert result.status is TaskStatus.DEAD
    assert [d.reason for d in broker.dead_letters()] == ["Retry: task asked to be retried in 0 s"]


def test_the_heartbeat_keeps_a_long_task_invisible_past_its_visibility_timeout(
    tmp_path: Path, store: ResultStore
) -> None:
    broker = open_broker(f"sqlite:///{tmp_path}/hb.db?visibility_timeout_s=0.6")
    task_id = _send(broker, "nap", {"s": 1.5})
    seen_by_others: list[object] = []
    stop = threading.Event()

    def other_consumer() -> None:
        with open_broker(broker.url) as other:
            while not stop.wait(0.1):
                seen_by_others.extend(other.receive(max_messages=1))

    thread = threading.Thread(target=other_consumer)
    thread.start()
    try:
        assert _worker(broker, store).step() is Outcome.SUCCEEDED
    finally:
        stop.set()
        thread.join()
    assert seen_by_others == []
    assert store.get(task_id) is not None
    assert broker.stats().pending == 0
