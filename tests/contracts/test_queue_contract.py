"""The broker contract, run against every backend: sqlite, redis (real server), sqs (moto server).

Where a backend cannot honour a clause the way the others do, the difference is a named field of
`Backend` below, asserted both ways, never a skipped test:

- `detects_stale_ack`: SQLite and Redis refuse `ack` with a receipt of an earlier delivery or an
  expired lease (`ReceiptExpiredError`). SQS answers DeleteMessage with an old receipt handle
  with success (real SQS may or may not delete; moto deletes), so on SQS a stale `ack` returns
  quietly. On every backend, release / extend of a receipt whose message is gone raises.
- `delayed_release_counts_as`: SQS counts a message released with a delay as not visible (in
  flight); SQLite and Redis count it as delayed.
- `exclusive_delivery`: SQLite (one write transaction) and Redis (one Lua script) hand a visible
  message to exactly one of many concurrent consumers. An SQS standard queue does not promise it
  (AWS: "more than one copy of a message might be delivered"), and moto's ReceiveMessage is not
  atomic across concurrent requests, so on SQS the test asserts at-least-once only.
- `tells_message_age`: SQLite and Redis report the age of the oldest visible message in
  `stats()`; SQS keeps it only as a CloudWatch metric, so its `stats()` says None.
- `deduplicates`: SQLite and Redis keep one live message per deduplication id (a task id):
  a second send of an id still queued, delayed or in flight queues nothing. An SQS standard
  queue has no deduplication and queues every send.
- SQS times are whole seconds, so timeouts and delays here are whole seconds on every backend.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetinfer.errors import (
    InputError,
    MalformedMessageError,
    PayloadTooLargeError,
    ReceiptExpiredError,
)
from fleetinfer.queue import MAX_MESSAGE_BYTES, Broker, Message, open_broker


@dataclass(frozen=True)
class Backend:
    name: str
    detects_stale_ack: bool
    delayed_release_counts_as: str  # "delayed" or "in_flight"
    exclusive_delivery: bool
    deduplicates: bool
    tells_message_age: bool = True


BACKENDS = {
    "sqlite": Backend("sqlite", True, "delayed", exclusive_delivery=True, deduplicates=True),
    "redis": Backend("redis", True, "delayed", exclusive_delivery=True, deduplicates=True),
    "sqs": Backend(
        "sqs",
        False,
        "in_flight",
        exclusive_delivery=False,
        deduplicates=False,
        tells_message_age=False,
    ),
}

OpenBroker = Callable[..., Broker]


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param]


@pytest.fixture
def broker_url(
    request: pytest.FixtureRequest, backend: Backend, tmp_path: Path, unique_name: str
) -> str:
    if backend.name == "sqlite":
        return f"sqlite:///{tmp_path}/queue.db?queue={unique_name}"
    if backend.name == "redis":
        redis_url: str = request.getfixturevalue("redis_url")
        return f"{redis_url}?queue={unique_name}"
    endpoint: str = request.getfixturevalue("moto_endpoint")
    return f"sqs://{unique_name}?region=us-east-1&endpoint_url={endpoint}"


@pytest.fixture
def open_(broker_url: str, backend: Backend) -> Iterator[OpenBroker]:
    """Open brokers on the test's queue; all are closed at the end, the queue purged (except
    on SQS, which allows one purge a minute and where every test has its own queue anyway)."""
    opened: list[Broker] = []

    def _open(*, visibility_timeout_s: float = 1.0, max_receives: int = 5) -> Broker:
        broker = open_broker(
            broker_url, visibility_timeout_s=visibility_timeout_s, max_receives=max_receives
        )
        opened.append(broker)
        return broker

    yield _open
    if opened and backend.name != "sqs":
        opened[0].purge()
    for broker in opened:
        broker.close()


def receive_one(broker: Broker, *, wait_s: float = 3.0) -> Message:
    messages = broker.receive(wait_s=wait_s)
    assert len(messages) == 1, f"expected one message, got {messages}"
    return messages[0]


def drain(broker: Broker, count: int) -> list[Message]:
    """Receive until `count` messages came (failing if they do not), then check none is left."""
    got: list[Message] = []
    while len(got) < count:
        messages = broker.receive(max_messages=10, wait_s=2)
        assert messages, f"expected {count} messages, only {len(got)} came"
        got += messages
    assert len(got) == count
    assert broker.receive() == []
    return got


def test_sent_message_is_received_once_and_gone_after_ack(open_: OpenBroker) -> None:
    broker = open_(visibility_timeout_s=30)
    message_id = broker.send({"task": "detect", "segment": 7})
    message = receive_one(broker)
    assert (message.id, message.json(), message.receive_count) == (
        message_id,
        {"task": "detect", "segment": 7},
        1,
    )
    assert message.sent_at == pytest.approx(time.time(), abs=30)
    assert broker.receive() == []
    broker.ack(message.receipt)
    assert broker.stats().pending == 0
    assert broker.receive() == []


def test_message_is_redelivered_after_visibility_timeout_with_receive_count_plus_one(
    open_: OpenBroker,
) -> None:
    broker = open_(visibility_timeout_s=1)
    first = (broker.send("work"), receive_one(broker))[1]
    assert broker.receive() == []
    second = receive_one(broker, wait_s=4)
    assert (second.id, second.receive_count) == (first.id, 2)
    assert second.receipt != first.receipt


def test_released_message_is_visible_again_at_once(open_: OpenBroker) -> None:
    broker = open_(visibility_timeout_s=30)
    broker.send("work")
    first = receive_one(broker)
    broker.release(first.receipt)
    again = broker.receive(wait_s=1)
    assert [(m.id, m.receive_count) for m in again] == [(first.id, 2)]


def test_released_message_with_delay_stays_hidden_until_the_delay_passes(
    open_: OpenBroker,
) -> None:
    broker = open_(visibility_timeout_s=30)
    broker.send("work")
    released_at = time.monotonic()
    broker.release(receive_one(broker).receipt, delay_s=2)
    assert broker.receive(wait_s=1) == []
    message = receive_one(broker, wait_s=5)
    assert time.monotonic() - released_at >= 1.9
    assert message.receive_count == 2


def test_extended_visibility_keeps_the_message_hidden(open_: OpenBroker) -> None:
    broker = open_(visibility_timeout_s=1)
    broker.send("long task")
    message = receive_one(broker)
    broker.extend_visibility(message.receipt, 3)
    assert broker.receive(wait_s=1.5) == []  # without the extension it was back after 1 s
    broker.ack(message.receipt)  # still ours: the extension kept the receipt valid
    assert broker.stats().pending == 0


def test_ack_with_the_receipt_of_an_earlier_delivery_follows_the_backend_rule(
    open_: OpenBroker, backend: Backend
) -> None:
    broker = open_(visibility_timeout_s=1)
    broker.send("work")
    first = receive_one(broker)
    second = receive_one(broker, wait_s=4)
    assert second.receive_count == 2
    if backend.detects_stale_ack:
        with pytest.raises(ReceiptExpiredError):
            broker.ack(first.receipt)
        broker.ack(second.receipt)
        assert broker.stats().pending == 0
    else:
        assert broker.ack(first.receipt) is None  # SQS answers success to an old handle


def test_ack_after_the_visibility_timeout_passed_follows_the_backend_rule(
    open_: OpenBroker, backend: Backend
) -> None:
    broker = open_(visibility_timeout_s=1)
    broker.send("slow task")
    message = receive_one(broker)
    time.sleep(1.3)
    if backend.detects_stale_ack:
        with pytest.raises(ReceiptExpiredError):
            broker.ack(message.receipt)
        assert receive_one(broker).receive_count == 2  # at least once: it comes back
    else:
        broker.ack(message.receipt)


def test_release_and_extend_of_an_acked_message_raise_receipt_expired(
    open_: OpenBroker,
) -> None:
    broker = open_(visibility_timeout_s=30)
    broker.send("work")
    message = receive_one(broker)
    broker.ack(message.receipt)
    with pytest.raises(ReceiptExpiredError):
        broker.release(message.receipt)
    with pytest.raises(ReceiptExpiredError):
        broker.extend_visibility(message.receipt, 10)


def test_message_is_dead_lettered_on_the_receive_after_max_receives(
    open_: OpenBroker,
) -> None:
    broker = open_(visibility_timeout_s=1, max_receives=2)
    message_id = broker.send({"poison": True})
    assert receive_one(broker).receive_count == 1
    assert receive_one(broker, wait_s=4).receive_count == 2
    time.sleep(1.2)
    assert broker.receive(wait_s=1) == []
    [dead] = broker.dead_letters()
    assert (dead.id, dead.body, dead.reason, dead.receive_count) == (
        message_id,
        '{"poison":true}',
        "exceeded max_receives=2",
        2,
    )
    assert broker.stats().dead == 1


def test_explicit_dead_letter_keeps_the_reason_and_the_body(open_: OpenBroker) -> None:
    broker = open_(visibility_timeout_s=30)
    message_id = broker.send({"segment": 3})
    message = receive_one(broker)
    broker.dead_letter(message.receipt, "Reject: segment 3 has no drives")
    [dead] = broker.dead_letters()
    assert (dead.id, dead.body, dead.reason, dead.receive_count) == (
        message_id,
        '{"segment":3}',
        "Reject: segment 3 has no drives",
        1,
    )
    assert dead.dead_at == pytest.approx(time.time(), abs=30)
    assert broker.receive() == []
    with pytest.raises(ReceiptExpiredError):
        broker.release(message.receipt)


def test_redrive_moves_dead_letters_back_with_a_fresh_receive_count(
    open_: OpenBroker,
) -> None:
    broker = open_(visibility_timeout_s=30)
    broker.send_batch([{"n": n} for n in range(3)])
    for message in drain(broker, 3):
        broker.dead_letter(message.receipt, "bad")
    assert broker.stats().dead == 3
    assert broker.redrive(limit=2) == 2
    assert broker.stats().dead == 1
    assert broker.redrive() == 1
    back = drain(broker, 3)
    assert sorted(m.json()["n"] for m in back) == [0, 1, 2]
    assert {m.receive_count for m in back} == {1}
    assert broker.dead_letters() == []


def test_stats_count_visible_in_flight_delayed_and_dead(
    open_: OpenBroker, backend: Backend
) -> None:
    broker = open_(visibility_timeout_s=30)
    broker.send_batch(["a", "b", "c", "d"])
    broker.send("later", delay_s=60)
    first, second, third = broker.receive(max_messages=3, wait_s=1)
    broker.dead_letter(first.receipt, "bad")
    broker.release(second.receipt, delay_s=60)
    stats = broker.stats()
    released = 1 if backend.delayed_release_counts_as == "delayed" else 0
    assert (stats.visible, stats.in_flight, stats.delayed, stats.dead) == (
        1,
        2 - released,
        1 + released,
        1,
    )
    assert stats.pending == 4
    broker.ack(third.receipt)
    assert broker.stats().pending == 3


def test_send_batch_returns_one_id_per_body_in_order(open_: OpenBroker) -> None:
    broker = open_(visibility_timeout_s=30)
    ids = broker.send_batch([{"n": n} for n in range(25)])
    assert len(set(ids)) == 25
    received = {m.id: m.json()["n"] for m in drain(broker, 25)}
    assert [received[i] for i in ids] == list(range(25))


def test_receive_takes_at_most_max_messages(open_: OpenBroker) -> None:
    broker = open_(visibility_timeout_s=30)
    broker.send_batch(list(range(7)))
    assert len(broker.receive(max_messages=5, wait_s=1)) <= 5
    with pytest.raises(InputError):
        broker.receive(max_messages=0)


def test_body_of_exactly_256_kib_passes_and_one_byte_more_is_refused(open_: OpenBroker) -> None:
    broker = open_(visibility_timeout_s=30)
    largest = "x" * MAX_MESSAGE_BYTES
    broker.send_raw(largest)
    assert receive_one(broker).body == largest
    with pytest.raises(PayloadTooLargeError):
        broker.send_raw(largest + "x")
    with pytest.raises(PayloadTooLargeError):
        broker.send({"blob": largest})
    with pytest.raises(PayloadTooLargeError):
        broker.send_batch(["small", largest])
    with pytest.raises(PayloadTooLargeError):
        broker.send_raw("é" * (MAX_MESSAGE_BYTES // 2 + 1))  # the limit counts UTF-8 bytes


def test_send_takes_json_only_and_send_raw_takes_any_text(open_: OpenBroker) -> None:
    broker = open_(visibility_timeout_s=30)
    with pytest.raises(MalformedMessageError):
        broker.send({"when": object()})
    with pytest.raises(MalformedMessageError):
        broker.send(float("nan"))
    with pytest.raises(MalformedMessageError, match="must be text"):
        broker.send_raw(b"bytes")  # type: ignore[arg-type]
    broker.send_raw("not json <>")
    message = receive_one(broker)
    assert message.body == "not json <>"
    with pytest.raises(MalformedMessageError):
        message.json()


def test_long_poll_returns_early_when_a_message_arrives(open_: OpenBroker) -> None:
    consumer, producer = open_(visibility_timeout_s=30), open_(visibility_timeout_s=30)
    sender = threading.Timer(0.5, lambda: producer.send("hello"))
    started = time.monotonic()
    sender.start()
    try:
        messages = consumer.receive(wait_s=10)
    finally:
        sender.join()
    assert [m.json() for m in messages] == ["hello"]
    assert time.monotonic() - started < 5


def test_long_poll_waits_about_wait_s_when_nothing_arrives(open_: OpenBroker) -> None:
    broker = open_(visibility_timeout_s=30)
    started = time.monotonic()
    assert broker.receive(wait_s=1) == []
    assert 0.9 <= time.monotonic() - started < 4


def test_concurrent_consumers_never_receive_the_same_visible_message_twice(
    open_: OpenBroker, backend: Backend
) -> None:
    consumers = [open_(visibility_timeout_s=60) for _ in range(4)]
    sent = set(consumers[0].send_batch(list(range(80))))
    got: list[list[str]] = [[] for _ in consumers]

    def consume(index: int) -> None:
        while messages := consumers[index].receive(max_messages=3, wait_s=1):
            got[index] += [m.id for m in messages]

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(consumers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [message_id for ids in got for message_id in ids]
    assert set(every) == sent
    if backend.exclusive_delivery:
        assert len(every) == len(sent), "a message was delivered twice within its timeout"


def test_ack_batch_acks_valid_receipts_and_reports_stale_ones(
    open_: OpenBroker, backend: Backend
) -> None:
    broker = open_(visibility_timeout_s=30)
    broker.send_batch(["a", "b", "c"])
    messages = drain(broker, 3)
    broker.ack(messages[0].receipt)
    receipts = [m.receipt for m in messages]
    if backend.detects_stale_ack:
        with pytest.raises(ReceiptExpiredError, match="1 receipt"):
            broker.ack_batch(receipts)
    else:
        broker.ack_batch(receipts)
    assert broker.stats().pending == 0


def test_purge_deletes_live_and_dead_messages(open_: OpenBroker) -> None:
    broker = open_(visibility_timeout_s=30)
    broker.send_batch(["a", "b"])
    broker.dead_letter(receive_one(broker).receipt, "bad")
    broker.purge()
    stats = broker.stats()
    assert (stats.pending, stats.dead) == (0, 0)
    assert broker.receive() == []


def test_stats_tell_the_age_of_the_oldest_visible_message(
    open_: OpenBroker, backend: Backend
) -> None:
    broker = open_(visibility_timeout_s=30)
    empty = broker.stats().oldest_visible_age_s
    before = time.time()
    broker.send_batch(["old", "new"])
    time.sleep(1.2)
    ages = broker.stats().oldest_visible_age_s
    taken = receive_one(broker)
    after_receive = broker.stats().oldest_visible_age_s
    broker.ack(taken.receipt)
    remaining = receive_one(broker)
    broker.ack(remaining.receipt)
    if not backend.tells_message_age:
        assert (empty, ages, after_receive) == (None, None, None)
        return
    assert empty == 0.0
    assert ages is not None
    assert 1.0 <= ages <= time.time() - before + 0.1
    assert after_receive is not None
    assert after_receive >= 1.0
    assert broker.stats().oldest_visible_age_s == 0.0


def test_a_send_whose_dedup_id_is_still_queued_queues_nothing_where_the_backend_deduplicates(
    open_: OpenBroker, backend: Backend
) -> None:
    broker = open_(visibility_timeout_s=30)
    first = broker.send_raw_batch(['"a"', '"b"'], dedup_ids=["task-1", "task-2"])
    again = broker.send_raw_batch(['"a again"', '"c"'], dedup_ids=["task-1", "task-3"])
    bodies = sorted(m.body for m in drain(broker, 3 if backend.deduplicates else 4))
    if backend.deduplicates:
        assert again[0] == first[0]  # the message already queued stands for the second send
        assert bodies == ['"a"', '"b"', '"c"']
    else:
        assert bodies == sorted(['"a"', '"a again"', '"b"', '"c"'])


def test_a_dedup_id_in_flight_or_delayed_holds_and_is_free_again_after_the_ack(
    open_: OpenBroker, backend: Backend
) -> None:
    broker = open_(visibility_timeout_s=30)
    broker.send_raw_batch(['"now"'], dedup_ids=["task-1"])
    broker.send_raw_batch(['"later"'], dedup_ids=["task-2"], delay_s=1)
    held = receive_one(broker)  # task-1 in flight, task-2 delayed
    broker.send_raw_batch(['"now again"', '"later again"'], dedup_ids=["task-1", "task-2"])
    expected = 2 if backend.deduplicates else 4
    assert broker.stats().pending == expected
    broker.ack(held.receipt)
    broker.send_raw_batch(['"after the ack"'], dedup_ids=["task-1"])  # free again: queued
    rest = drain_within(broker, expected, wait_s=4)
    assert '"after the ack"' in [m.body for m in rest]


def test_a_redriven_dead_letter_gives_way_to_a_resubmitted_copy_where_the_backend_deduplicates(
    open_: OpenBroker, backend: Backend
) -> None:
    broker = open_(visibility_timeout_s=30)
    broker.send_raw_batch(['"first"'], dedup_ids=["task-1"])
    broker.dead_letter(receive_one(broker).receipt, "failed")
    broker.send_raw_batch(['"resubmitted"'], dedup_ids=["task-1"])  # dead letters hold no id
    broker.redrive()
    bodies = sorted(m.body for m in drain(broker, 1 if backend.deduplicates else 2))
    assert bodies == (
        ['"resubmitted"'] if backend.deduplicates else sorted(['"first"', '"resubmitted"'])
    )


def test_dedup_ids_must_match_the_bodies_one_to_one(open_: OpenBroker) -> None:
    broker = open_()
    with pytest.raises(InputError, match="one id per body"):
        broker.send_raw_batch(['"a"', '"b"'], dedup_ids=["task-1"])
    with pytest.raises(InputError, match="non-empty string"):
        broker.send_raw_batch(['"a"'], dedup_ids=[""])


def drain_within(broker: Broker, count: int, *, wait_s: float) -> list[Message]:
    """Receive and ack until `count` messages came, waiting up to `wait_s` for delayed ones."""
    got: list[Message] = []
    deadline = time.monotonic() + wait_s
    while len(got) < count and time.monotonic() < deadline:
        for message in broker.receive(max_messages=10, wait_s=1):
            broker.ack(message.receipt)
            got.append(message)
    assert len(got) == count, [m.body for m in got]
    return got
