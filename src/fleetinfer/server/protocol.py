"""The wire protocol between workers and the model server: one Unix socket per client thread.

Every message is a frame: a fixed 12-byte header (`HEADER`: magic, protocol version, kind, request
id, body length) followed by a small msgspec/msgpack body. Tensors never travel on the socket: they
sit in the client's shared-memory region and the body carries only their name, dtype, shape, offset
and size. Errors travel as an `ErrorReply` (code + message) and are re-raised in the client as the
same exception class from `fleetinfer.errors`. Nothing is ever pickled.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar

import msgspec

from fleetinfer.errors import (
    ConfigError,
    FleetinferError,
    InferenceError,
    IntegrityError,
    InvalidInputError,
    MalformedMessageError,
    ModelConfigError,
    PayloadTooLargeError,
    ServerUnavailableError,
    UnknownModelError,
)

MAGIC: Final = b"FI"
PROTOCOL_VERSION: Final = 1
HEADER: Final = struct.Struct("<2sBBII")  # magic, version, kind, request id, body length
REQUEST_ID: Final = struct.Struct("<I")  # a header's request id alone, at REQUEST_ID_AT
REQUEST_ID_AT: Final = struct.calcsize("<2sBB")
MAX_BODY_BYTES: Final = 64 * 1024
ALIGNMENT_BYTES: Final = 64
MAX_WIRE_INT: Final = (1 << 62) - 1  # any size, offset or dimension above is refused at decode
# A size, offset, dimension or version: checked when a body is decoded, before any arithmetic,
# so that no sum or product of them can overflow what the wire (msgpack: 64 bits) carries.
Size = Annotated[int, msgspec.Meta(ge=0, le=MAX_WIRE_INT)]


class Kind:
    """Frame kinds: requests from the client, replies from the server."""

    ATTACH: Final = 1
    INFER: Final = 2
    MODEL_INFO: Final = 3
    CONTROL: Final = 4
    OK: Final = 16
    ERROR: Final = 17


class TensorRef(msgspec.Struct, frozen=True, array_like=True):
    """Where a tensor lies in the client's region."""

    name: str
    dtype: str
    shape: tuple[Size, ...]
    offset: Size
    nbytes: Size


class Attach(msgspec.Struct, frozen=True, array_like=True):
    """The client's shared-memory region, by name in /dev/shm, and its size."""

    name: str
    size_bytes: Size


class InferRequest(msgspec.Struct, frozen=True, array_like=True):
    """Run `model` (version 0 = newest loaded) on `inputs`, writing outputs inside the window."""

    model: str
    version: Size
    inputs: tuple[TensorRef, ...]
    output_offset: Size
    output_bytes: Size


class InferReply(msgspec.Struct, frozen=True, array_like=True):
    version: int
    outputs: tuple[TensorRef, ...]


class ModelInfoRequest(msgspec.Struct, frozen=True, array_like=True):
    model: str


class ModelInfo(msgspec.Struct, frozen=True, array_like=True):
    name: str
    versions: tuple[int, ...]
    max_batch_size: int


class ControlRequest(msgspec.Struct, frozen=True, array_like=True):
    """`load`, `unload` or `reload` a model (version 0 = as the version policy says); `status`."""

    action: str
    model: str = ""
    version: Size = 0


class ControlReply(msgspec.Struct, frozen=True, array_like=True):
    loaded: dict[str, tuple[int, ...]]


class ErrorReply(msgspec.Struct, frozen=True, array_like=True):
    code: int
    message: str
    needed_bytes: int = 0
    size_bytes: int = 0
    limit_bytes: int = 0


class Empty(msgspec.Struct, frozen=True, array_like=True):
    pass


class OutputSpaceError(FleetinferError):
    """Internal: the outputs do not fit the client's window; the client grows its region."""

    def __init__(self, needed_bytes: int) -> None:
        super().__init__(f"outputs need {needed_bytes} bytes of the client's region")
        self.needed_bytes = needed_bytes


ERROR_CODES: Final[dict[type[FleetinferError], int]] = {
    MalformedMessageError: 1,
    UnknownModelError: 2,
    InvalidInputError: 3,
    PayloadTooLargeError: 4,
    InferenceError: 5,
    ServerUnavailableError: 6,
    ModelConfigError: 7,
    IntegrityError: 8,
    OutputSpaceError: 9,
    ConfigError: 11,
    FleetinferError: 10,  # last: the nearest known class wins
}
ERROR_CLASSES: Final = {code: cls for cls, code in ERROR_CODES.items()}

_ENCODER = msgspec.msgpack.Encoder()
_DECODERS: dict[type[Any], msgspec.msgpack.Decoder[Any]] = {}
T = TypeVar("T", bound=msgspec.Struct)


def frame(kind: int, request_id: int, body: msgspec.Struct | bytes) -> bytes:
    """A whole frame; `body` a message, or one already encoded (`encode`)."""
    payload = body if isinstance(body, bytes) else _ENCODER.encode(body)
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, kind, request_id, len(payload)) + payload


def encode(body: msgspec.Struct) -> bytes:
    """A message's encoded body, for one sent many times (a cached reply)."""
    return _ENCODER.encode(body)


def decode(kind: type[T], body: bytes | memoryview) -> T:
    """Decode a body into `kind`; anything malformed becomes `MalformedMessageError`."""
    decoder = _DECODERS.get(kind)
    if decoder is None:
        decoder = _DECODERS[kind] = msgspec.msgpack.Decoder(kind)
    try:
        result: T = decoder.decode(body)
    except Exception as exc:  # every failure: bad UTF-8, RecursionError on deep nesting, ...
        raise MalformedMessageError(
            f"message body is not a valid {kind.__name__}: {exc}; "
            "client and server must run the same fleetinfer protocol version"
        ) from exc
    return result


def error_reply(exc: FleetinferError) -> ErrorReply:
    """The wire form of an error: the code of its nearest known class, and its message."""
    code = next(code for cls, code in ERROR_CODES.items() if isinstance(exc, cls))
    return ErrorReply(
        code=code,
        message=str(exc),
        needed_bytes=_wire_size(getattr(exc, "needed_bytes", 0)),
        size_bytes=_wire_size(getattr(exc, "size_bytes", 0)),
        limit_bytes=_wire_size(getattr(exc, "limit_bytes", 0)),
    )


def _wire_size(value: int) -> int:
    """A size as an error reply can carry it: a claimed size beyond 64 bits is clamped (the
    message keeps the exact number), so the reply is always encodable."""
    return min(max(int(value), 0), (1 << 63) - 1)


def rebuild_error(reply: ErrorReply) -> FleetinferError:
    """The exception the server raised, rebuilt in the client with the same class and message."""
    cls = ERROR_CLASSES.get(reply.code, FleetinferError)
    if cls is OutputSpaceError:
        return OutputSpaceError(reply.needed_bytes)
    exc = cls.__new__(cls)
    Exception.__init__(exc, reply.message)  # the server already formatted the message
    if isinstance(exc, PayloadTooLargeError):
        exc.size_bytes, exc.limit_bytes = reply.size_bytes, reply.limit_bytes
    return exc


def aligned(offset: int) -> int:
    return (offset + ALIGNMENT_BYTES - 1) // ALIGNMENT_BYTES * ALIGNMENT_BYTES


def default_socket_path() -> Path:
    """`$FLEETINFER_SOCKET`, else `$XDG_RUNTIME_DIR/fleetinfer/models.sock`, else under /tmp."""
    if explicit := os.environ.get("FLEETINFER_SOCKET"):
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "fleetinfer" if runtime else Path(f"/tmp/fleetinfer-{os.getuid()}")
    return base / "models.sock"
