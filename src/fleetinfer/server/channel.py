"""The client end of the transport: one socket and one shared-memory region per client thread.

Inputs are copied once into the region; the server reads them in place and writes the outputs into
a window of the region. Outputs come back as numpy views of the region (no copy): the bytes they
use are leased until the arrays are garbage-collected, then reused. If leases pile up (the caller
keeps many results alive) outputs are copied out instead, so the region never grows for that.

A worker repeats the same request (same model, input dtypes and shapes, inputs at the same place,
outputs small enough to copy out) over and over. The second time such a request goes the long
way it becomes a `RepeatedCall`: its body is encoded once, inputs that are not in place are
copied to a range of the region kept for it, its output window is kept too, so the server
answers it with the same reply, byte for byte, each time; the caller only copies inputs in,
sends, compares the reply and copies the outputs out. An input that lies in the region but
somewhere else each time (a task draws its windows into one `empty()` array and sends them one
by one) is staged like one that is not: the second such request of a layout becomes a
`RepeatedCall` that copies every input to its own range, wherever it lies, up to 4 MiB of
inputs (`STAGED_MOVING_MAX_BYTES`). A copy of a 590 KB CDNet window costs about 17 µs; each
window the long way cost both ends about 190 µs (decoding, validating and a fresh ONNX Runtime
binding in the server). The kept ranges come from the end of the
region, away from the arrays that come and go. On the 2-vCPU development VM this took the
client's user CPU for a 16-byte request from about 74 to about 49 µs (A/B of the two versions,
spinning off).

Where the C module is built (`native.py`), a channel's `Lane` runs its repeated calls in C: it
keys a call by the inputs' names, formats, shapes and where they lie, then copies, sends, waits
(spinning as `spin.py` says, without the GIL), compares the reply and copies the outputs out. A
call it cannot key (a mapping that is not a dict; an array that is strided, byte-swapped or of a
subclass of ndarray) goes on in Python as above, and a reply other than the kept one (a new
layout, an error) is handed back to `_settle`. Both keep the same calls: `_keep_repeated` files
each one in the lane too.
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import select
import socket
import struct
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import msgspec
import numpy as np

from fleetinfer.errors import InvalidInputError, ModelDeadlineError, PayloadTooLargeError
from fleetinfer.server.native import compiled, native_available
from fleetinfer.server.protocol import (
    HEADER,
    MAGIC,
    MAX_BODY_BYTES,
    REQUEST_ID,
    REQUEST_ID_AT,
    Attach,
    ControlReply,
    ControlRequest,
    Empty,
    ErrorReply,
    InferReply,
    InferRequest,
    Kind,
    ModelInfo,
    ModelInfoRequest,
    OutputSpaceError,
    TensorRef,
    aligned,
    decode,
    encode,
    frame,
    rebuild_error,
)
from fleetinfer.server.repository import DTYPES
from fleetinfer.server.shm import SharedRegion, unlink_segment
from fleetinfer.server.spin import Spinner
from fleetinfer.server.trust import check_server_peer

Tensors = dict[str, np.ndarray[Any, Any]]
R = TypeVar("R", bound=msgspec.Struct)
_SUPPORTED_KINDS = "biuf"
_GROWTH_STEP_BYTES = 1 << 20
COPY_OUT_MAX_BYTES = 64 * 1024  # smaller outputs are copied out: cheaper than leasing the bytes
_LAYOUTS_KEPT = 64
REPEATED_CALLS_KEPT = 16
REPEATED_SHARE_MAX = 4  # repeated calls keep at most 1/4 of the region for themselves
STAGED_MOVING_MAX_BYTES = 4 << 20  # inputs copied each call rather than sent the long way
_SEEN_KEPT = 64
REPLY_SPIN_US = 500  # how long a caller polls for the reply before it blocks (`spin.py`)
ATTACH_TIMEOUT_S = 10.0  # a connection's first request (attach) waits this long for its reply
_TIMED_OUT = (errno.EAGAIN, errno.EWOULDBLOCK)  # a blocking socket's SO_RCVTIMEO ran out
_DTYPE_NAMES = {np.dtype(t): name for name, t in DTYPES.items()}


class OutputLayout(NamedTuple):
    """A reply's outputs, relative to the start of the window, and the bytes they span."""

    used_bytes: int
    outputs: tuple[tuple[str, np.dtype[Any], tuple[int, ...], int], ...]


@dataclass(slots=True)
class RepeatedCall:
    """A request sent again and again, encoded once (module docstring). `reply` is None until
    the first answer; `outputs` are then its outputs, checked, as views of the window, which each
    call copies out (a different later reply is checked anew)."""

    frame: bytearray  # header and body; each call writes its request id into the header
    staged: tuple[tuple[str, np.ndarray[Any, Any]], ...]  # inputs copied here on each call
    window: tuple[int, int]
    kept: tuple[tuple[int, int], ...]  # the ranges of the region it keeps: staging and window
    reply: bytes | None = None
    outputs: tuple[tuple[str, np.ndarray[Any, Any]], ...] = ()  # views of `reply`'s outputs
    lane_key: bytes | None = None  # its key in the channel's C lane, if kept there
    lane_staged: tuple[int | None, ...] = ()  # per input, the address it is staged at, if any


class ChannelBrokenError(ConnectionError):
    """The socket failed mid-request: reconnect, then retry (inference is idempotent)."""


class Arena:
    """First-fit allocator of aligned byte ranges in a region; `free` may come from any thread."""

    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes
        self.leased_bytes = 0
        self._free: list[tuple[int, int]] = [(0, size_bytes)]  # (offset, size), by offset
        self._lock = threading.Lock()

    def alloc(self, nbytes: int) -> int | None:
        nbytes = aligned(max(nbytes, 1))
        with self._lock:
            for i, (offset, size) in enumerate(self._free):
                if size >= nbytes:
                    self._free[i : i + 1] = (
                        [(offset + nbytes, size - nbytes)] if size > nbytes else []
                    )
                    return offset
        return None

    def alloc_high(self, nbytes: int) -> int | None:
        """Like `alloc`, from the end of the region: for ranges kept a long time, which would
        otherwise split the low offsets that short-lived arrays reuse (and make them wander
        over pages not touched before)."""
        nbytes = aligned(max(nbytes, 1))
        with self._lock:
            for i in range(len(self._free) - 1, -1, -1):
                offset, size = self._free[i]
                if size >= nbytes:
                    self._free[i : i + 1] = [(offset, size - nbytes)] if size > nbytes else []
                    return offset + size - nbytes
        return None

    def take_largest(self) -> tuple[int, int]:
        with self._lock:
            if not self._free:
                return 0, 0
            i = max(range(len(self._free)), key=lambda j: self._free[j][1])
            return self._free.pop(i)

    def free(self, offset: int, nbytes: int) -> None:
        if nbytes <= 0:
            return
        with self._lock:
            blocks = sorted([*self._free, (offset, nbytes)])
            merged = [blocks[0]]
            for start, size in blocks[1:]:
                last_start, last_size = merged[-1]
                if last_start + last_size == start:
                    merged[-1] = (last_start, last_size + size)
                else:
                    merged.append((start, size))
            self._free = merged

    def lease(self, nbytes: int) -> None:
        with self._lock:
            self.leased_bytes += nbytes

    def release(self, offset: int, nbytes: int) -> None:
        with self._lock:
            self.leased_bytes -= nbytes
        self.free(offset, nbytes)

    def grow(self, size_bytes: int) -> None:
        old, self.size_bytes = self.size_bytes, size_bytes
        self.free(old, size_bytes - old)


class Channel:
    """A connected socket plus an attached region; used by one thread at a time."""

    def __init__(
        self,
        sock: socket.socket,
        region: SharedRegion,
        max_region_bytes: int,
        *,
        spin_us: float = REPLY_SPIN_US,
    ) -> None:
        self.sock, self.region, self.max_region_bytes = sock, region, max_region_bytes
        self.pid = os.getpid()
        self.deadline_s: float | None = None  # the socket's reply timeout now (None: none)
        self.spinner = Spinner(spin_us)
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        self._reply = memoryview(bytearray(HEADER.size + MAX_BODY_BYTES))  # kept: replies land here
        self.arena = Arena(region.size_bytes)
        self._ids = itertools.count(1)
        self._lane = (
            compiled.Lane(sock.fileno(), region.address, region.size_bytes, spin_us, np.ndarray)
            if native_available()
            else None
        )
        self._layouts: dict[tuple[bytes, tuple[int, int]], OutputLayout] = {}
        self._repeated: dict[tuple[Any, ...], RepeatedCall] = {}
        self._repeated_bytes = 0
        self._seen_once: set[tuple[Any, ...]] = set()  # keys sent once, the long way
        # id -> (weak reference, address) of each live array `empty` handed out: where it lies
        # without `__array_interface__` (2.5 µs a call, most of a key's cost)
        self._handed_out: dict[int, tuple[weakref.ref[np.ndarray[Any, Any]], int]] = {}
        self._finalizer = weakref.finalize(self, _unlink_if_owner, region.name, self.pid)

    @classmethod
    def connect(
        cls,
        socket_path: Path,
        *,
        region_bytes: int,
        max_region_bytes: int,
        spin_us: float = REPLY_SPIN_US,
        attach_timeout_s: float = ATTACH_TIMEOUT_S,
    ) -> Channel:
        """Connect and attach a fresh region; `OSError` if nobody listens, `ModelDeadlineError`
        if the server accepts but does not answer the attach within `attach_timeout_s`."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _set_socket_timeout(sock, attach_timeout_s)
            sock.connect(str(socket_path))
            check_server_peer(sock, socket_path)  # not another user in the server's place
            region = SharedRegion.create(region_bytes)
        except BaseException:
            sock.close()
            raise
        channel = cls(sock, region, max_region_bytes, spin_us=spin_us)
        channel.deadline_s = attach_timeout_s
        try:
            channel.call(Kind.ATTACH, Attach(region.name, region.size_bytes), Empty)
        except BaseException:
            channel.close()
            raise
        return channel

    def set_deadline(self, seconds: float) -> None:
        """Each later request fails with `ModelDeadlineError` when its reply has not come
        `seconds` after it was sent (the socket's timeout: both the C and the Python path
        block in `recv` on it). A system call only when the value changes."""
        if seconds != self.deadline_s:
            _set_socket_timeout(self.sock, seconds)
            self.deadline_s = seconds

    def close(self) -> None:
        """Close the socket and unlink the region; outputs still in use stay readable."""
        if self._lane is not None:
            self._lane.close()  # before the socket: its number may be reused at once
        self.sock.close()
        _unlink_if_owner(self.region.name, self.pid)  # a forked child must not unlink ours
        self.region.close()
        self._finalizer.detach()

    def call(self, kind: int, body: msgspec.Struct, reply_type: type[R]) -> R:
        """One request, one reply; server errors are raised as their own exception class."""
        return decode(reply_type, self._exchange(kind, body))

    def _exchange(self, kind: int, body: msgspec.Struct | bytes) -> bytes:
        """Send one request (a message, or one already encoded); the body of its successful
        reply."""
        request_id = self._next_id()
        return self._send_frame(frame(kind, request_id, body), request_id)

    def _next_id(self) -> int:
        """A request id: the lane's when there is one, so the two never repeat each other's."""
        if self._lane is not None:
            return self._lane.next_id()
        return next(self._ids) & 0xFFFFFFFF

    def _send_frame(self, data: bytes | bytearray, request_id: int) -> bytes:
        """Send a whole request frame; the body of its successful reply."""
        try:
            self.sock.sendall(data)
            self.spinner.spin(self._readable)
            reply_kind, reply_id, payload = self._read_frame()
            self.spinner.answered()
        except OSError as exc:
            raise _broken(exc, self.deadline_s) from exc
        if reply_id not in (request_id, 0):
            raise ChannelBrokenError(f"reply {reply_id} does not answer request {request_id}")
        if reply_kind == Kind.ERROR:
            raise rebuild_error(decode(ErrorReply, payload))
        return payload

    def _readable(self) -> bool:
        return bool(self._poller.poll(0))

    def _read_frame(self) -> tuple[int, int, bytes]:
        """One reply frame, into the buffer kept for replies; usually a single recv (the header
        and body arrive together)."""
        reply = self._reply
        got = self.sock.recv_into(reply)
        if not got:
            raise ChannelBrokenError("the model server closed the connection")
        while got < HEADER.size:
            got += self._recv_into(reply[got : HEADER.size])
        magic, _version, kind, request_id, length = HEADER.unpack_from(reply)
        if magic != MAGIC or length > MAX_BODY_BYTES:
            raise ChannelBrokenError("the model server sent a frame this client cannot parse")
        end = HEADER.size + length
        while got < end:
            got += self._recv_into(reply[got:end])
        return kind, request_id, bytes(reply[HEADER.size : end])

    def _recv_into(self, view: memoryview) -> int:
        got = self.sock.recv_into(view)
        if not got:
            raise ChannelBrokenError("the model server closed the connection")
        return got

    def model_info(self, model: str) -> ModelInfo:
        return self.call(Kind.MODEL_INFO, ModelInfoRequest(model), ModelInfo)

    def control(self, action: str, model: str = "", version: int | None = None) -> ControlReply:
        return self.call(Kind.CONTROL, ControlRequest(action, model, version or 0), ControlReply)

    def infer(self, model: str, inputs: Mapping[str, Any], version: int | None) -> Tensors:
        lane = self._lane
        if lane is not None:
            try:
                done = lane.call(model, version, inputs)
            except OSError as exc:
                raise _broken(exc, self.deadline_s) from exc
            if type(done) is dict:
                return done
            if done is not None:
                outputs = self._settle(*done)
                if outputs is not None:
                    return outputs
        key = self._call_key(model, version, inputs)
        repeated = self._repeated.get(key) or self._repeated.get(_copied_in_key(key))
        if repeated is not None:
            outputs = self._repeat(repeated, inputs)
            if outputs is not None:
                return outputs
        arrays = _arrays(inputs)
        for _ in range(3):
            try:
                outputs, request, layout, copied = self._infer_once(model, arrays, version)
            except OutputSpaceError as exc:
                self._grow(exc.needed_bytes + sum(aligned(a.nbytes) for a in arrays.values()))
                continue
            self._keep_repeated(key, request, layout, copied, arrays)
            return outputs
        raise PayloadTooLargeError("the outputs", self.region.size_bytes, self.max_region_bytes)

    def _call_key(
        self, model: str, version: int | None, inputs: Mapping[str, Any]
    ) -> tuple[Any, ...]:
        """What makes two requests the same `RepeatedCall`: the model, each input's name, dtype
        and shape, and where it lies when it lies in the region (None: copied in)."""
        key: list[Any] = [model, version]
        for name, array in inputs.items():
            if not isinstance(array, np.ndarray):
                return ()  # never kept: `_arrays` raises the error
            key += (name, array.dtype, array.shape, self._offset_in_region(array))
        return tuple(key)

    def _offset_in_region(self, array: np.ndarray[Any, Any]) -> int | None:
        """Where `array` lies in the region, if the server can read it there; else None."""
        if array.dtype not in _DTYPE_NAMES or not array.flags.c_contiguous:
            return None
        handed_out = self._handed_out.get(id(array))
        if handed_out is not None and handed_out[0]() is array:
            address = handed_out[1]  # an array's data never moves
        else:
            address = array.__array_interface__["data"][0]
        offset: int = address - self.region.address
        return offset if offset >= 0 and offset + array.nbytes <= self.region.size_bytes else None

    def _repeat(self, call: RepeatedCall, inputs: Mapping[str, Any]) -> Tensors | None:
        """Run a repeated call; None if the server's answer ends it (the caller goes the long
        way), an error reply is raised as usual."""
        for name, staging in call.staged:
            np.copyto(staging, inputs[name])
        request_id = self._next_id()
        REQUEST_ID.pack_into(call.frame, REQUEST_ID_AT, request_id)
        try:
            payload = self._send_frame(call.frame, request_id)
        except OutputSpaceError:  # the model's outputs grew: no longer fit the kept window
            self._drop_repeated()
            return None
        return self._copied_out(call, payload)

    def _settle(self, call: RepeatedCall, kind: int, payload: bytes) -> Tensors | None:
        """A repeated call the lane sent, whose reply is not the one it kept: an error is
        raised as usual, except that outputs grown out of the kept window end it (None: the
        caller goes the long way); a new reply is checked and kept."""
        if kind == Kind.ERROR:
            error = rebuild_error(decode(ErrorReply, payload))
            if isinstance(error, OutputSpaceError):
                self._drop_repeated()
                return None
            raise error
        return self._copied_out(call, payload)

    def _copied_out(self, call: RepeatedCall, payload: bytes) -> Tensors:
        """The outputs of a repeated call's reply, copied out of its window."""
        if payload != call.reply:
            layout, start = self._layout(payload, call.window), call.window[0]
            span = self.region.buffer[start : start + layout.used_bytes]
            call.outputs = tuple(_outputs(layout, span).items())
            call.reply = payload
            if self._lane is not None and call.lane_key is not None:
                self._lane.keep(
                    call.lane_key, call, call.frame, call.lane_staged, payload, call.outputs
                )
        outputs: Tensors = {}
        for name, view in call.outputs:  # a loop: 3.11 makes a function per comprehension
            outputs[name] = view.copy()  # 2 µs less per call than one copy cut into arrays
        return outputs

    def _keep_repeated(
        self,
        key: tuple[Any, ...],
        request: InferRequest,
        layout: OutputLayout,
        copied_in: frozenset[str],
        arrays: Tensors,
    ) -> None:
        """After a request (of `arrays`) went the long way: keep it as a `RepeatedCall` when
        its outputs are copied out and the region can spare the ranges it keeps (a range of its
        own for each input not in place, `copied_in`, and the output window); in the C lane
        too, when there is one and it can key these inputs."""
        if not key or layout.used_bytes > COPY_OUT_MAX_BYTES or key in self._repeated:
            return
        staged_key = _copied_in_key(key)
        if staged_key in self._repeated:
            return  # kept with its inputs staged: it takes them wherever they lie
        if key in self._seen_once:  # the same again: keep it (inputs in place read there)
            self._seen_once.discard(key)
        elif staged_key in self._seen_once and _stageable(arrays):  # the same layout, its
            self._seen_once.discard(staged_key)  # inputs elsewhere in the region each time:
            key, copied_in = staged_key, frozenset(arrays)  # keep it with them staged
        else:  # keep only what repeats: remember it the first time
            self._remember(key, staged_key)
            return
        copied = [ref for ref in request.inputs if ref.name in copied_in]
        sizes = [aligned(max(n, 1)) for n in [*(ref.nbytes for ref in copied), layout.used_bytes]]
        if self._repeated_bytes + sum(sizes) > self.region.size_bytes // REPEATED_SHARE_MAX:
            return
        if len(self._repeated) >= REPEATED_CALLS_KEPT:
            self._drop_repeated()
        kept = self._alloc_all(sizes)
        if kept is None:
            return
        moved = {ref.name: offset for ref, offset in zip(copied, kept, strict=False)}
        refs = tuple(
            TensorRef(r.name, r.dtype, r.shape, moved.get(r.name, r.offset), r.nbytes)
            for r in request.inputs
        )
        staged = tuple(
            (r.name, self.region.view(moved[r.name], np.dtype(DTYPES[r.dtype]), r.shape))
            for r in copied
        )
        window = (kept[-1], sizes[-1])
        body = encode(InferRequest(request.model, request.version, refs, *window))
        ranges = tuple(zip(kept, sizes, strict=True))
        call = RepeatedCall(bytearray(frame(Kind.INFER, 0, body)), staged, window, ranges)
        self._repeated[key] = call
        self._repeated_bytes += sum(sizes)
        if self._lane is not None:
            call.lane_key = self._lane.key(
                request.model, request.version or None, arrays, key == staged_key
            )
            address = self.region.address
            call.lane_staged = tuple(
                address + moved[ref.name] if ref.name in moved else None for ref in request.inputs
            )
        if call.lane_key is not None:  # no reply yet: the first answer is checked, then kept
            assert self._lane is not None
            self._lane.keep(call.lane_key, call, call.frame, call.lane_staged, b"", ())

    def _remember(self, *keys: tuple[Any, ...]) -> None:
        if len(self._seen_once) + len(keys) > _SEEN_KEPT:
            self._seen_once.clear()
        self._seen_once.update(keys)

    def _alloc_all(self, sizes: list[int]) -> list[int] | None:
        """Offsets of one new range per size, or None (and nothing kept) if one does not fit."""
        offsets: list[int] = []
        for size in sizes:
            offset = self.arena.alloc_high(size)
            if offset is None:
                for taken, taken_size in zip(offsets, sizes, strict=False):
                    self.arena.free(taken, taken_size)
                return None
            offsets.append(offset)
        return offsets

    def _drop_repeated(self) -> None:
        """Forget every `RepeatedCall` and give back the ranges they kept."""
        for call in self._repeated.values():
            for offset, size in call.kept:
                self.arena.free(offset, size)
        self._repeated.clear()
        self._repeated_bytes = 0
        if self._lane is not None:
            self._lane.clear()

    def _infer_once(
        self, model: str, arrays: Tensors, version: int | None
    ) -> tuple[Tensors, InferRequest, OutputLayout, frozenset[str]]:
        """One request the long way: its outputs, the request and reply layout, and the names
        of the inputs copied into the region for it (the others lay there already)."""
        staged = [self._place(name, array) for name, array in arrays.items()]
        window = self.arena.take_largest()
        try:
            request = InferRequest(model, version or 0, tuple(ref for ref, _ in staged), *window)
            payload = self._exchange(Kind.INFER, request)
            layout = self._layouts.get((payload, window)) or self._layout(payload, window)
        except BaseException:
            self.arena.free(*window)
            raise
        finally:
            for ref, copied in staged:
                if copied:
                    self.arena.free(ref.offset, aligned(max(ref.nbytes, 1)))
        copied_in = frozenset(ref.name for ref, copied in staged if copied)
        return self._collect(layout, window), request, layout, copied_in

    def _place(self, name: str, array: np.ndarray[Any, Any]) -> tuple[TensorRef, bool]:
        """Where `array` lies in the region: in place if it already does (an `empty()`
        array of this channel), else copied into a freshly allocated range (True)."""
        offset = self._offset_in_region(array)
        if offset is not None:
            ref = TensorRef(name, _DTYPE_NAMES[array.dtype], array.shape, offset, array.nbytes)
            return ref, False
        offset = self.arena.alloc(array.nbytes)
        if offset is None:
            self._grow(aligned(array.nbytes) * 2)
            offset = self.arena.alloc(array.nbytes)
            assert offset is not None  # the region just grew by more than that
        native = array.dtype.newbyteorder("=")
        np.copyto(self.region.view(offset, native, array.shape), array)
        ref = TensorRef(
            name, _DTYPE_NAMES.get(native) or native.name, array.shape, offset, array.nbytes
        )
        return ref, True

    def empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
        """An uninitialised array inside the region: fill it and pass it to `infer`, and the
        server reads it in place (no copy). Its bytes are leased until it is garbage-collected."""
        nbytes = math.prod(shape) * dtype.itemsize
        offset = self.arena.alloc(nbytes)
        if offset is None:
            self._grow(aligned(nbytes) * 2)
            offset = self.arena.alloc(nbytes)
            assert offset is not None  # the region just grew by more than that
        used = aligned(max(nbytes, 1))
        lease = np.frombuffer(self.region.mmap, np.uint8, count=used, offset=offset)
        self.arena.lease(used)
        weakref.finalize(lease, self.arena.release, offset, used)
        array = lease[:nbytes].view(dtype).reshape(shape)
        key, handed_out = id(array), self._handed_out
        ref = weakref.ref(array, lambda _: handed_out.pop(key, None))
        handed_out[key] = (ref, self.region.address + offset)
        return array

    def _layout(self, payload: bytes, window: tuple[int, int]) -> OutputLayout:
        """Decode and check a reply; kept, since a worker gets the same reply, byte for byte,
        for each request of the same layout (only the output values in the region change)."""
        reply = decode(InferReply, payload)
        start, size = window
        if any(r.offset < start or r.offset + r.nbytes > start + size for r in reply.outputs):
            raise ChannelBrokenError(
                "the model server wrote outputs outside the window it was given"
            )
        end = max((r.offset + r.nbytes for r in reply.outputs), default=start)
        outputs = tuple(
            (r.name, np.dtype(r.dtype), r.shape, r.offset - start) for r in reply.outputs
        )
        layout = OutputLayout(aligned(end - start), outputs)
        if len(self._layouts) >= _LAYOUTS_KEPT:
            self._layouts.clear()
        self._layouts[(payload, window)] = layout
        return layout

    def _collect(self, layout: OutputLayout, window: tuple[int, int]) -> Tensors:
        """The outputs in the window: small ones copied out at once (one copy for all), larger
        ones leased (numpy views of the region, whose bytes are reused once they are gone)."""
        start, size = window
        used = layout.used_bytes
        copy_out = (
            used <= COPY_OUT_MAX_BYTES
            or self.arena.leased_bytes + used > self.region.size_bytes // 2
        )
        if copy_out:
            span = self.region.buffer[start : start + used].copy()
            self.arena.free(start, size)
        else:  # an array of its own over the mapping: the outputs' base, which the lease follows
            span = np.frombuffer(self.region.mmap, np.uint8, count=used, offset=start)
            self.arena.free(start + used, size - used)
            self.arena.lease(used)
            weakref.finalize(span, self.arena.release, start, used)
        return _outputs(layout, span)

    def _grow(self, min_free_bytes: int) -> None:
        wanted = max(self.region.size_bytes * 2, self.region.size_bytes + min_free_bytes)
        size = -(-wanted // _GROWTH_STEP_BYTES) * _GROWTH_STEP_BYTES
        if size > self.max_region_bytes:
            raise PayloadTooLargeError(
                "the shared-memory region this request needs", size, self.max_region_bytes
            )
        self._drop_repeated()  # their staging views are of the mapping about to go
        old, self.region = self.region, self.region.resize(size)
        old.close()
        if self._lane is not None:
            self._lane.rebind(self.region.address, size)
        self.arena.grow(size)
        self.call(Kind.ATTACH, Attach(self.region.name, size), Empty)


def _outputs(layout: OutputLayout, span: np.ndarray[Any, Any]) -> Tensors:
    """The output arrays of `layout` over `span`, the bytes of its window (no copy)."""
    outputs: Tensors = {}
    for (
        name,
        dtype,
        shape,
        offset,
    ) in layout.outputs:  # a loop: 3.11 makes a function per comprehension
        outputs[name] = np.ndarray(shape, dtype, buffer=span, offset=offset)
    return outputs


def _set_socket_timeout(sock: socket.socket, seconds: float) -> None:
    """SO_RCVTIMEO and SO_SNDTIMEO: the socket stays blocking (the C lane relies on it), and a
    recv or send that waits longer fails with EAGAIN."""
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _stageable(arrays: Tensors) -> bool:
    """Whether copying these inputs on every call costs less than the long way (about 190 µs
    on both ends together, measured with CDNet; a copy runs at about 35 GB/s)."""
    return sum(a.nbytes for a in arrays.values()) <= STAGED_MOVING_MAX_BYTES


def _copied_in_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """The `_call_key` of the same inputs copied in: where each input lies left out. A call kept
    under it stages every input, so it serves inputs that lie in the region somewhere else each
    time (a task that draws its windows into one `empty()` array and sends them one by one)
    with one request the server knows (`_keep_repeated`)."""
    if not key:
        return key
    placed = list(key[2:])
    placed[3::4] = [None] * (len(placed) // 4)  # (name, dtype, shape, offset) per input
    return (*key[:2], *placed)


def _broken(exc: OSError, deadline_s: float | None) -> Exception:
    """The error for a request whose socket failed with `exc`: past its deadline (the
    connection is then out of step and must be dropped), or broken."""
    if exc.errno in _TIMED_OUT:
        within = "its deadline" if deadline_s is None else f"the deadline of {deadline_s:g} s"
        return ModelDeadlineError(
            f"the model server did not answer within {within}: it is "
            "hung or far behind (the node restarts a server that stops answering; raise the "
            "deadline with --model-deadline-s if the model is this slow)"
        )
    return ChannelBrokenError(f"model server connection failed: {exc}")


def _unlink_if_owner(name: str, pid: int) -> None:
    if os.getpid() == pid:
        unlink_segment(name)


def _arrays(inputs: Mapping[str, Any]) -> Tensors:
    arrays: Tensors = {}
    for name, array in inputs.items():
        if not isinstance(array, np.ndarray):
            raise InvalidInputError(
                f"input {name!r} must be a numpy array, got {type(array).__name__}"
            )
        if array.dtype.kind not in _SUPPORTED_KINDS:
            raise InvalidInputError(
                f"input {name!r} has dtype {array.dtype}, which cannot travel in shared memory: "
                "use a numeric or bool dtype"
            )
        arrays[name] = array
    return arrays
