"""Hostile input to a model server in this process: sizes that overflow, model names that leave
the repository, control operations the server does not allow. Each gets a typed error reply on a
connection that stays open, and the next correct request is answered bit-exact."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest

from fleetinfer.client import SharedModelClient
from fleetinfer.errors import (
    ConfigError,
    InvalidInputError,
    MalformedMessageError,
    PayloadTooLargeError,
    UnknownModelError,
)
from fleetinfer.server.protocol import (
    ERROR_CLASSES,
    HEADER,
    Attach,
    ControlRequest,
    ErrorReply,
    InferRequest,
    Kind,
    TensorRef,
    decode,
    encode,
    error_reply,
    frame,
)
from fleetinfer.server.repository import ModelRepository
from fleetinfer.server.server import ModelServer
from fleetinfer.server.session import OrtModel
from fleetinfer.server.shm import SharedRegion
from tests.helpers.servers import start_server
from tests.helpers.tiny_models import affine_repository

pytestmark = pytest.mark.usefixtures("lanes")  # the C and the Python request paths

REGION_BYTES = 1 << 16


class RawClient:
    """Speaks the protocol by hand, to send what a correct client never would."""

    def __init__(self, socket_path: Path) -> None:
        self.region = SharedRegion.create(REGION_BYTES)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(socket_path))
        assert self.send(Kind.ATTACH, Attach(self.region.name, REGION_BYTES))[0] == Kind.OK

    def send(self, kind: int, body: msgspec.Struct | bytes) -> tuple[int, bytes]:
        self.sock.sendall(frame(kind, 7, body))
        _magic, _version, reply_kind, _id, length = HEADER.unpack(self._exact(HEADER.size))
        return reply_kind, self._exact(length)

    def error(self, kind: int, body: msgspec.Struct | bytes) -> type[Exception]:
        """The class of the typed error a request is answered with."""
        reply_kind, payload = self.send(kind, body)
        assert reply_kind == Kind.ERROR, "a hostile request was answered as a success"
        return ERROR_CLASSES[decode(ErrorReply, payload).code]

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            more = self.sock.recv(n - len(data))
            if not more:
                raise ConnectionError("the server closed the connection")
            data += more
        return data

    def close(self) -> None:
        self.sock.close()
        self.region.unlink()
        self.region.close()


@pytest.fixture
def raw(server: ModelServer) -> Iterator[RawClient]:
    client = RawClient(server.config.socket_path)
    yield client
    client.close()


def assert_answers_bit_exact(client: SharedModelClient, repo: Path) -> None:
    """The next correct request: the same bytes as ONNX Runtime in this process."""
    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    expected = OrtModel(ModelRepository(repo).resolve("affine", 2)).infer({"x": x})["y"]
    got = client.model("affine").infer({"x": x})["y"]
    assert got.dtype == expected.dtype
    assert got.tobytes() == expected.tobytes()


HUGE = 1 << 63  # what the probe declared: fits the wire's 64 bits, overflows every sum
GOOD = TensorRef("x", "float32", (1, 4), 0, 16)


def infer(*refs: TensorRef, out: tuple[int, int] = (4096, 4096), version: int = 0) -> bytes:
    return encode(InferRequest("affine", version, refs, *out))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (  # the probe's input: two inputs declaring 2^63 bytes each
            infer(
                TensorRef("x", "float32", (1, 4), 0, HUGE), TensorRef("y", "float32", (1,), 0, HUGE)
            ),
            MalformedMessageError,
        ),
        (infer(TensorRef("x", "float32", (1, 4), 0, (1 << 64) - 1)), MalformedMessageError),
        (infer(TensorRef("x", "float32", (1, 4), HUGE, 16)), MalformedMessageError),
        (infer(TensorRef("x", "float32", (HUGE, 4), 0, 16)), MalformedMessageError),
        (infer(TensorRef("x", "float32", (1, 4), 0, -16)), MalformedMessageError),
        (infer(TensorRef("x", "float32", (-1, 4), 0, 16)), MalformedMessageError),
        (infer(GOOD, out=(HUGE, 64)), MalformedMessageError),
        (infer(GOOD, out=(0, -1)), MalformedMessageError),
        (infer(GOOD, version=HUGE), MalformedMessageError),
        (  # a product of dimensions far above any size
            infer(TensorRef("x", "float32", (1 << 40, 1 << 40, 1 << 40), 0, 16)),
            InvalidInputError,
        ),
        (infer(TensorRef("x", "float32", ((1 << 62) - 1, 0), 0, 0)), InvalidInputError),
        (  # an offset plus a size past the region
            infer(TensorRef("x", "float32", (1, 4), REGION_BYTES - 8, 16)),
            InvalidInputError,
        ),
        (infer(GOOD, out=((1 << 62) - 1, (1 << 62) - 1)), InvalidInputError),
        (  # sizes that sum past the request limit, each one within the wire's bound
            infer(
                TensorRef("x", "float32", (1 << 59, 2), 0, 1 << 61),
                TensorRef("y", "float32", (1 << 59, 2), 0, 1 << 61),
            ),
            PayloadTooLargeError,
        ),
    ],
    ids=[
        "two-inputs-of-2^63-bytes",
        "nbytes-2^64-1",
        "offset-2^63",
        "dimension-2^63",
        "negative-nbytes",
        "negative-dimension",
        "output-offset-2^63",
        "negative-output-bytes",
        "version-2^63",
        "dimensions-whose-product-overflows",
        "huge-dimension-of-an-empty-tensor",
        "offset-plus-size-past-the-region",
        "output-window-past-the-region",
        "sizes-summing-past-the-limit",
    ],
)
def test_sizes_that_overflow_get_a_typed_error_on_a_connection_that_stays_open(
    raw: RawClient, client: SharedModelClient, repo: Path, body: bytes, error: type[Exception]
) -> None:
    assert raw.error(Kind.INFER, body) is error
    assert raw.send(Kind.CONTROL, ControlRequest("status"))[0] == Kind.OK  # still answered
    assert_answers_bit_exact(client, repo)


@pytest.mark.parametrize(
    ("kind", "body", "error"),
    [
        (Kind.ATTACH, Attach("fleetinfer-1-0123456789abcdef", HUGE), MalformedMessageError),
        (Kind.ATTACH, Attach("fleetinfer-1-0123456789abcdef", -1), MalformedMessageError),
        (Kind.CONTROL, ControlRequest("load", "affine", HUGE), MalformedMessageError),
    ],
)
def test_sizes_that_overflow_in_other_messages_get_a_typed_error(
    raw: RawClient,
    client: SharedModelClient,
    repo: Path,
    kind: int,
    body: msgspec.Struct,
    error: type,
) -> None:
    assert raw.error(kind, body) is error
    assert raw.send(Kind.CONTROL, ControlRequest("status"))[0] == Kind.OK
    assert_answers_bit_exact(client, repo)


def test_an_error_reply_carries_any_claimed_size() -> None:
    """A size past 64 bits in an error is clamped on the wire; the message keeps it exact."""
    reply = error_reply(PayloadTooLargeError("request", 1 << 64, 1 << 30))
    decoded = decode(ErrorReply, encode(reply))
    assert decoded.size_bytes == (1 << 63) - 1
    assert str(1 << 64) in decoded.message


OUTSIDE_NAMES = [
    "../other/affine",
    "../other",
    "/etc",
    "affine/../affine",
    "affine/2",
    "..",
    ".",
    "",
    ".hidden",
    "a\x00b",
    "x" * 300,
]


def test_control_load_refuses_model_names_outside_the_repository(
    client: SharedModelClient, repo: Path, short_dir: Path
) -> None:
    affine_repository(short_dir / "other", versions={1: 5.0})  # beside the repository
    before = client.control("status")
    for name in OUTSIDE_NAMES:
        with pytest.raises(UnknownModelError, match="not a plain name"):
            client.control("load", name)
        with pytest.raises(UnknownModelError, match="not a plain name"):
            client.control("unload", name)
    assert client.control("status") == before
    assert_answers_bit_exact(client, repo)


def test_an_absolute_path_is_not_a_model_name(
    client: SharedModelClient, repo: Path, short_dir: Path
) -> None:
    outside = affine_repository(short_dir / "other", versions={1: 5.0}) / "affine"
    with pytest.raises(UnknownModelError, match="not a plain name"):
        client.control("load", str(outside))
    with pytest.raises(UnknownModelError, match="not loaded"):
        client.model(str(outside)).infer({"x": np.ones((1, 4), np.float32)})
    assert str(outside) not in client.control("status")


@pytest.fixture
def owner_only(repo: Path, short_dir: Path) -> Iterator[SharedModelClient]:
    """A server started as `fleetinfer serve` starts it: model control off."""
    server = start_server(repo, short_dir / "o.sock", model_control=False)
    client = SharedModelClient(server.config.socket_path, connect_timeout_s=2.0)
    yield client
    client.close()
    server.stop()


@pytest.mark.parametrize(("action", "version"), [("load", 1), ("unload", 2), ("unload", None)])
def test_load_and_unload_are_refused_unless_the_server_allows_model_control(
    owner_only: SharedModelClient, repo: Path, action: str, version: int | None
) -> None:
    before = owner_only.control("status")
    with pytest.raises(ConfigError, match="--allow-model-control"):
        owner_only.control(action, "affine", version)
    assert owner_only.control("status") == before
    assert owner_only.control("reload") == before  # what the repository says: always allowed
    assert_answers_bit_exact(owner_only, repo)
