"""Payload files and the task ids that make a resubmit safe."""

from __future__ import annotations

import io

import pytest

from fleetinfer.errors import InputError
from fleetinfer.payloads import (
    canonical_json,
    content_task_id,
    ids_from_content,
    ids_from_field,
    parse_jsonl,
    payload_sha256,
)


def test_canonical_json_and_its_hash_ignore_key_order_and_keep_unicode() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'
    assert payload_sha256({"b": 1, "a": "é"}) == payload_sha256({"a": "é", "b": 1})
    with pytest.raises(InputError, match="not JSON-serializable"):
        canonical_json(float("nan"))


def test_a_content_id_depends_on_the_task_and_the_payload_only() -> None:
    assert content_task_id("square", {"n": 1, "m": 2}) == content_task_id(
        "square", {"m": 2, "n": 1}
    )
    assert content_task_id("square", {"n": 1}) != content_task_id("cube", {"n": 1})
    with pytest.raises(InputError, match=r"payloads 1 and 3 of f\.jsonl have the same task id"):
        ids_from_content([{"n": 1}, {"n": 2}, {"n": 1}], "square", "f.jsonl")


def test_ids_from_a_field_accept_strings_and_integers_and_refuse_the_rest() -> None:
    assert ids_from_field([{"id": "a"}, {"id": 7}], "id", "f") == ["a", "7"]
    for payloads, message in [
        ([{"id": True}], "string or an integer"),
        ([{"id": ""}], "1 to 256 characters"),
        ([["not", "an", "object"]], "is a list, not an object"),
        ([{"key": 1}], "has no field 'id' \\(fields: key\\)"),
        ([{"id": 1}, {"id": "1"}], "same task id '1'"),
    ]:
        with pytest.raises(InputError, match=message):
            ids_from_field(payloads, "id", "f")


def test_a_line_that_is_not_utf8_or_not_json_is_named_by_its_number() -> None:
    good = b'{"n": 1}\n\n[2]\n'
    assert parse_jsonl(io.BytesIO(good), "f") == [{"n": 1}, [2]]
    with pytest.raises(
        InputError, match="line 2 of f is not UTF-8 text \\(byte 0xfc at column 12\\)"
    ):
        parse_jsonl(io.BytesIO('{"n": 1}\n{"name": "Zürich"}\n'.encode("latin-1")), "f")
    with pytest.raises(InputError, match="line 1 of f is not JSON"):
        parse_jsonl(io.BytesIO(b"{n: 1}\n"), "f")


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b"[" * 5000 + b"]" * 5000, "nests arrays and objects 5000 deep"),
        (b'{"a": ' * 300 + b"1" + b"}" * 300, "nests arrays and objects 300 deep"),
        (b"1" * 5000, "is not a payload this queue can carry"),
    ],
)
def test_a_payload_line_no_queue_message_could_carry_is_an_input_error(
    line: bytes, says: str
) -> None:
    with pytest.raises(InputError, match=says):
        parse_jsonl([b'{"n": 1}', line], "f")
