"""Hostile queue messages and stored rows: every failure of a decoder is a typed
`MalformedMessageError` raised from the original, never RecursionError, OverflowError,
UnicodeError or a crash; values the producer side accepts are the values the consumer reads."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fleetinfer.errors import InputError, MalformedMessageError
from fleetinfer.node.preemption import describe_notice
from fleetinfer.queue import open_broker
from fleetinfer.queue.base import Message, encode_body
from fleetinfer.results import TaskResult, TaskStatus, open_store
from fleetinfer.task import Envelope
from fleetinfer.untrusted import MAX_JSON_DEPTH, decode_json, json_depth

DEEP = 10_000  # about 10 KB of brackets each way, as the probe sent


def envelope_with(payload_text: str) -> str:
    return '{"v": 1, "id": "t1", "task": "square", "payload": ' + payload_text + "}"


HOSTILE_BODIES: dict[str, str | bytes] = {
    "nested arrays": "[" * DEEP + "]" * DEEP,
    "nested arrays in the payload": envelope_with("[" * DEEP + "]" * DEEP),
    "nested objects in the payload": envelope_with('{"a": ' * DEEP + "1" + "}" * DEEP),
    "mixed nesting, unclosed": envelope_with('[{"a": ' * DEEP),
    "nesting in an unknown field": '{"v": 1, "id": "t1", "task": "x", "z": ' + "[" * DEEP + "}",
    "a huge integer": envelope_with("1" + "0" * 5000),
    "a huge version": '{"v": 1' + "0" * 400 + ', "id": "t1", "task": "square"}',
    "a number beyond float": envelope_with("1e999"),
    "invalid UTF-8": b'{"v": 1, "id": "\xff\xfe", "task": "square"}',
    "a lone surrogate in text": '{"v": 1, "id": "\ud800", "task": "square"}',
    "an escaped lone surrogate": '{"v": 1, "id": "\\udc00x", "task": "square"}',
    "a top-level array": "[1, 2, 3]",
    "a top-level number": "42",
    "a top-level string": '"hello"',
    "null": "null",
    "empty": "",
    "a string version": '{"v": "1", "id": "t1", "task": "square"}',
    "an integer id": '{"v": 1, "id": 7, "task": "square"}',
    "a list task": '{"v": 1, "id": "t1", "task": ["square"]}',
    "a missing task": '{"v": 1, "id": "t1"}',
    "an unknown field": '{"v": 1, "id": "t1", "task": "square", "extra": 1}',
    "a NUL byte": '{"v": 1, "id": "t1",\x00 "task": "square"}',
    "another version": '{"v": 2, "id": "t1", "task": "square"}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
def test_every_hostile_envelope_raises_malformed_message_error(name: str) -> None:
    with pytest.raises(MalformedMessageError) as info:
        Envelope.decode(HOSTILE_BODIES[name])
    assert isinstance(info.value, InputError)  # the worker dead-letters InputError at once
    assert "message" in str(info.value) or "envelope" in str(info.value)


NOT_JSON = [
    "nested arrays",
    "nested objects in the payload",
    "mixed nesting, unclosed",
    "a huge integer",
    "invalid UTF-8",
    "a lone surrogate in text",
    "empty",
    "a NUL byte",
]


@pytest.mark.parametrize("name", NOT_JSON)
def test_message_json_raises_malformed_message_error_naming_the_message(name: str) -> None:
    body = HOSTILE_BODIES[name]
    text = body if isinstance(body, str) else body.decode("utf-8", "surrogateescape")
    message = Message(id="m1", body=text, receipt="r", receive_count=1, sent_at=0.0)
    with pytest.raises(MalformedMessageError, match="message m1"):
        message.json()


def test_deep_nesting_is_refused_before_parsing_with_the_depth_and_the_limit() -> None:
    with pytest.raises(MalformedMessageError, match=r"10001 deep, above the limit of 128"):
        Envelope.decode(envelope_with("[" * DEEP + "]" * DEEP))


def test_nesting_up_to_the_limit_decodes_and_one_more_level_does_not() -> None:
    inside = MAX_JSON_DEPTH - 1  # the envelope object is one level
    envelope = Envelope.decode(envelope_with("[" * inside + "]" * inside))
    assert json_depth(envelope.encode().encode()) == MAX_JSON_DEPTH
    with pytest.raises(MalformedMessageError, match="above the limit"):
        Envelope.decode(envelope_with("[" * (inside + 1) + "]" * (inside + 1)))


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = "[" * 5000 + '\\"{' * 100
    envelope = Envelope.decode(envelope_with(f'{{"text": "{text}"}}'))
    assert envelope.payload == {"text": "[" * 5000 + '"{' * 100}


def test_a_producer_cannot_send_what_a_worker_would_refuse() -> None:
    deep: list[object] = []
    for _ in range(MAX_JSON_DEPTH):
        deep = [deep]
    deeper: list[object] = []
    for _ in range(DEEP):
        deeper = [deeper]
    for payload in (deep, deeper, "\ud800"):
        with pytest.raises(MalformedMessageError):
            Envelope.new("square", payload).encode()
    with pytest.raises(MalformedMessageError):
        encode_body(deeper)


def test_decode_json_names_what_and_shows_the_start_of_the_data() -> None:
    with pytest.raises(MalformedMessageError) as info:
        decode_json(b"\xff" * 200, what="the thing")
    text = str(info.value)
    assert text.startswith("the thing is not JSON")
    assert len(text) < 400
    assert isinstance(info.value.__cause__, ValueError)


def test_a_stored_result_that_is_not_json_raises_a_typed_error_naming_the_task(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/results.db"
    with open_store(url) as store:
        for task_id in ("deep", "garbage"):
            store.put(TaskResult(task_id=task_id, task_name="t", status=TaskStatus.SUCCEEDED))
    with sqlite3.connect(tmp_path / "results.db") as conn:
        conn.execute("UPDATE fleetinfer_results SET value = ? WHERE task_id = 'deep'", ["[" * DEEP])
        conn.execute("UPDATE fleetinfer_results SET value = '{nope' WHERE task_id = 'garbage'")
    with open_store(url) as store:
        for task_id in ("deep", "garbage"):
            with pytest.raises(MalformedMessageError, match=f"value of task '{task_id}'"):
                store.get(task_id)


def test_a_result_too_deep_to_read_back_is_refused_when_stored(tmp_path: Path) -> None:
    value: list[object] = []
    for _ in range(DEEP):
        value = [value]
    with open_store(f"sqlite:///{tmp_path}/results.db") as store:
        for depth_value in (value, value[0]):
            result = TaskResult(
                task_id="x", task_name="t", status=TaskStatus.SUCCEEDED, value=depth_value
            )
            with pytest.raises(InputError, match="result 'x'"):
                store.put(result)


@pytest.fixture
def redis_queue(redis_url: str, unique_name: str) -> Iterator[str]:
    url = f"{redis_url}?queue={unique_name}&max_receives=3"
    yield url
    with open_broker(url) as broker:
        broker.purge()


def test_a_redis_entry_written_by_someone_else_comes_back_and_is_dead_lettered(
    redis_queue: str, redis_url: str, unique_name: str
) -> None:
    """Invalid UTF-8 and missing fields in a raw stream entry: receive still returns it (it
    does not fail for every worker), the envelope is refused, dead-lettering works."""
    with open_broker(redis_queue) as broker:
        client = redis.Redis.from_url(redis_url)
        stream = f"fleetinfer:{{{unique_name}}}:stream"
        client.xadd(stream, {"body": b'{"v": 1, "id": "\xff", "task": "x"}'})
        client.xadd(stream, {"id": "only-an-id", "sent_at": "yesterday"})
        client.close()
        messages = broker.receive(max_messages=10)
        assert len(messages) == 2
        for message in messages:
            with pytest.raises(MalformedMessageError):
                Envelope.decode(message.body)
            broker.dead_letter(message.receipt, "MalformedMessageError: test")
        dead = broker.dead_letters()
        assert len(dead) == 2
        assert {d.reason for d in dead} == {"MalformedMessageError: test"}
        assert "only-an-id" in {d.id for d in dead}


@pytest.mark.parametrize(
    "body",
    [b"[" * DEEP + b"]" * DEEP, b'{"a": ' * DEEP + b"1" + b"}" * DEEP, b"\xff\xfe", b"1" * 5000],
)
def test_a_hostile_spot_notice_is_described_not_raised(body: bytes) -> None:
    """The node drains on any notice: describing it must not fail, whatever its body."""
    text = describe_notice(body)
    assert text.startswith("spot interruption notice: ")
    assert len(text) < 200
