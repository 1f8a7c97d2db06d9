"""Hostile frame bodies: whatever a peer sends, `protocol.decode` raises MalformedMessageError
(the server answers it as a bad request, not as an internal error), for every body kind."""

from __future__ import annotations

import random

import msgspec
import pytest

from fleetinfer.errors import MalformedMessageError
from fleetinfer.server import protocol

KINDS = [
    protocol.Attach,
    protocol.InferRequest,
    protocol.InferReply,
    protocol.ModelInfoRequest,
    protocol.ModelInfo,
    protocol.ControlRequest,
    protocol.ControlReply,
    protocol.ErrorReply,
    protocol.Empty,
]
NESTED = b"\x91" * 60_000 + b"\x90"  # 60,000 nested one-element arrays: within one frame


def hostile_bodies(kind: type[msgspec.Struct]) -> list[bytes]:
    fields = len(kind.__struct_fields__)
    valid_start = [msgspec.msgpack.encode(v) for v in ("a", 1, [], 0, 0)][:fields]
    trailing_nested = bytes([0x90 + fields + 1]) + b"".join(valid_start) + NESTED
    rng = random.Random(fields)
    noise = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 48))) for _ in range(300)]
    return [
        NESTED,
        trailing_nested,
        b"\xcf" + b"\xff" * 8,  # uint64 max
        b"\xd3\x80" + b"\x00" * 7,  # int64 min
        msgspec.msgpack.encode(["\udcff".encode("utf-8", "surrogateescape").hex()] * 3),
        b"\xa2\xff\xfe",  # a str of invalid UTF-8
        b"",
        *noise,
    ]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_every_hostile_body_is_malformed_never_another_error(kind: type[msgspec.Struct]) -> None:
    refused: list[MalformedMessageError] = []
    for body in hostile_bodies(kind):
        try:
            protocol.decode(kind, body)
        except MalformedMessageError as exc:
            refused.append(exc)
    assert len(refused) > 200
    assert all(kind.__name__ in str(exc) for exc in refused)
