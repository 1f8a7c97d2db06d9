"""The node's model server: one copy of each model, shared by every local worker.

Workers connect over a Unix socket (mode 0600, same user only) and attach a shared-memory region
they own; each request names tensors inside that region, so tensors never cross the socket. One
thread per connection reads frames; a request whose model is idle runs on that thread, otherwise it
queues for the model's batcher (`executor.py`). A bad request gets a typed error and the server
carries on; a frame that cannot be parsed closes only its connection. When a connection drops, the
server unmaps and unlinks the regions it attached, so a killed worker leaves no segment behind.

A request a connection has seen before, byte for byte, whose direct plan is made, takes the fast
lane: with the C module built, its `ServerLane` reads it, checks the region, runs it through the
executor's `run_direct` and answers it without any other Python, and without the GIL but for the
model run; without it, `_run_repeated` does the same in Python.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec

from fleetinfer.errors import ConfigError, FleetinferError, MalformedMessageError
from fleetinfer.server.metrics import HealthServer, StatsBook
from fleetinfer.server.native import compiled, native_available
from fleetinfer.server.protocol import (
    HEADER,
    MAGIC,
    MAX_BODY_BYTES,
    PROTOCOL_VERSION,
    Attach,
    ControlReply,
    ControlRequest,
    Empty,
    InferReply,
    InferRequest,
    Kind,
    ModelInfo,
    ModelInfoRequest,
    decode,
    error_reply,
    frame,
)
from fleetinfer.server.registry import ModelRegistry
from fleetinfer.server.repository import ModelRepository, checked_model_name
from fleetinfer.server.requests import Prepared, PreparedCache, prepare
from fleetinfer.server.shm import SharedRegion, unlink_segment
from fleetinfer.server.spin import Spinner
from fleetinfer.server.trust import peer_uid, private_socket_folder

log = logging.getLogger(__name__)
REQUEST_SPIN_US = 200.0  # how long a connection polls for its client's next request (`spin.py`)
ACCEPT_BACKOFF_S = (0.005, 0.1)  # first and longest wait after a failed accept (EMFILE, ...)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """How a model server runs; sizes in bytes, `metrics_port` None = no HTTP endpoint."""

    models: Path
    socket_path: Path
    metrics_port: int | None = 0
    max_request_bytes: int = 1 << 30
    max_region_bytes: int = 4 << 30
    intra_op_threads: int | None = None
    instance_count: int | None = None  # None: each model's config.toml decides
    spin_us: float = REQUEST_SPIN_US  # 0: block at once
    allowed_uids: frozenset[int] = frozenset()  # peers besides the server's own user
    model_control: bool = False  # control `load` / `unload` allowed (from the server's user)


class ModelServer:
    """Loads the repository's models and serves them on a Unix socket until `stop()`."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.stats = StatsBook()
        self.registry = ModelRegistry(
            ModelRepository(config.models),
            self.stats,
            intra_op_threads=config.intra_op_threads,
            instance_count=config.instance_count,
        )
        self.health: HealthServer | None = None
        self._listener: socket.socket | None = None
        self._connections: set[Connection] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._ready = False
        self.readable = select.epoll()  # every connection's socket: has any client sent data?
        self.native = native_available()  # connections serve their kept requests in C
        self.tally: Tally = compiled.Tally() if self.native else PyTally()

    @property
    def ready(self) -> bool:
        return self._ready and not self._stopped.is_set()

    @property
    def metrics_port(self) -> int | None:
        return None if self.health is None else self.health.port

    def start(self) -> ModelServer:
        private_socket_folder(self.config.socket_path.parent)  # refused before loading models
        if self.config.metrics_port is not None:
            self.health = HealthServer(self.stats, lambda: self.ready, self.config.metrics_port)
            self.health.start()
        self.registry.load_all()
        self._listener = _listen(self.config.socket_path)
        threading.Thread(target=self._accept_loop, name="fleetinfer-accept", daemon=True).start()
        self._ready = True
        log.info("serving %s on %s", self.registry.loaded(), self.config.socket_path)
        return self

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._stopped.wait(timeout_s)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.config.socket_path.unlink()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.shutdown()
        self.registry.close()
        if self.health is not None:
            self.health.stop()
        self.readable.close()

    def connection_count(self) -> int:
        with self._lock:
            return len(self._connections)

    def reload(self, model: str | None = None) -> list[FleetinferError]:
        """The one reload path, for SIGHUP and the control message: bring `model` (or every
        model) in line with the repository. A broken new version never stops the server: it
        keeps serving what it had, and each model that failed is logged, counted
        (`fleetinfer_reload_failures`) and returned as a typed error."""
        failures: list[FleetinferError] = []
        try:
            names = [model] if model else self.registry.repository.models()
        except OSError as exc:  # the repository folder went away or became unreadable
            names, failures = [], [ConfigError(f"cannot list the model repository: {exc}")]
        for name in names:
            try:
                self.registry.reload(name)
            except FleetinferError as exc:
                failures.append(exc)
            except Exception as exc:  # a server bug must not take the server down either
                log.exception("reloading %s failed", name)
                failures.append(FleetinferError(f"reloading {name!r} failed: {exc!r}"))
        for failure in failures:
            self.stats.count("fleetinfer_reload_failures")
            log.error("reload failed, still serving %s: %s", self.registry.loaded(), failure)
        return failures

    def _accept_loop(self) -> None:
        """Accept until stopped. A failed accept (out of descriptors: EMFILE, ENFILE; out of
        memory) is counted (`fleetinfer_accept_errors`), logged, and retried after a backoff
        that doubles up to `ACCEPT_BACKOFF_S[1]`; the loop ends only when the server stops."""
        assert self._listener is not None
        backoff_s, logged_at = ACCEPT_BACKOFF_S[0], 0.0
        while not self._stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError as exc:
                if self._stopped.is_set():
                    return
                self.stats.count("fleetinfer_accept_errors")
                if time.monotonic() - logged_at > 10.0:  # at most one line per 10 s
                    logged_at = time.monotonic()
                    log.error("accepting a connection failed, retrying: %s", exc)
                self._stopped.wait(backoff_s)
                backoff_s = min(2 * backoff_s, ACCEPT_BACKOFF_S[1])
                continue
            backoff_s = ACCEPT_BACKOFF_S[0]
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        """Serve an accepted socket on its own thread, if its peer may talk to this server."""
        try:
            uid = peer_uid(sock)
            if uid != os.getuid() and uid not in self.config.allowed_uids:
                log.warning("refused a connection from uid %d", uid)
                sock.close()
                return
            connection = Connection(self, sock, uid)
            self.readable.register(sock, select.EPOLLIN)
            with self._lock:
                self._connections.add(connection)
            thread = threading.Thread(target=connection.run, name="fleetinfer-conn", daemon=True)
            thread.start()
        except (OSError, RuntimeError, ValueError, MemoryError) as exc:
            # out of threads or memory, or closed (ValueError: the server stopped meanwhile)
            self.stats.count("fleetinfer_accept_errors")
            log.error("could not serve a new connection: %s", exc)
            with self._lock:
                self._connections = {c for c in self._connections if c.sock is not sock}
            with contextlib.suppress(OSError, ValueError):
                self.readable.unregister(sock)
            sock.close()

    def forget(self, connection: Connection) -> None:
        with self._lock:
            self._connections.discard(connection)
        with contextlib.suppress(OSError, ValueError):  # ValueError: the server stopped
            self.readable.unregister(connection.sock)

    @property
    def in_flight(self) -> int:
        """Requests read and not yet answered, over every connection."""
        return self.tally.in_flight()

    def others_need_the_gil(self) -> bool:
        """Whether a spinning connection thread should stop: a request is being served, or a
        client has sent one that its thread has not read yet."""
        if self.in_flight > 0:
            return True
        try:
            return bool(self.readable.poll(0))
        except ValueError:  # closed: the server is stopping
            return True


def _listen(path: Path) -> socket.socket:
    private_socket_folder(path.parent)  # ours, mode 0700: nobody can take the socket's place
    if path.exists() or path.is_symlink():
        _remove_stale_socket(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(256)
    except OSError as exc:
        listener.close()
        raise ConfigError(f"cannot listen on {path}: {exc}; choose another --socket") from exc
    except BaseException:
        listener.close()
        raise
    return listener


def _remove_stale_socket(path: Path) -> None:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: a crashed server's leftover
        return
    finally:
        probe.close()
    raise ConfigError(
        f"another model server already listens on {path}: stop it or choose another --socket"
    )


class Tally(Protocol):
    """Requests read and not yet answered, over every connection (`_native.Tally` in C)."""

    def read(self) -> None: ...

    def answered(self) -> None: ...

    def in_flight(self) -> int: ...


class PyTally:
    """`Tally` in Python, for a build without the C module."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def read(self) -> None:
        with self._lock:
            self._count += 1

    def answered(self) -> None:
        with self._lock:
            self._count -= 1

    def in_flight(self) -> int:
        return self._count


class _FrameError(Exception):
    """The byte stream cannot be parsed any further: answer if possible, then close."""


def _checked_header(header: bytes | bytearray | memoryview, at: int = 0) -> tuple[int, int, int]:
    """A frame header's kind, request id and body length; `_FrameError` if it is not one."""
    magic, version, kind, request_id, length = HEADER.unpack_from(header, at)
    if magic != MAGIC or version != PROTOCOL_VERSION:
        raise _FrameError(
            f"frame header has magic {magic!r} version {version}, expected {MAGIC!r} "
            f"version {PROTOCOL_VERSION}: is this a fleetinfer client of the same version?"
        )
    if length > MAX_BODY_BYTES:
        raise _FrameError(f"frame body of {length} bytes is above {MAX_BODY_BYTES} bytes")
    return kind, request_id, length


class Connection:
    """One client socket: reads frames, answers them, owns the client's attached regions.

    With the C module built, the connection's `ServerLane` reads its frames and serves the
    requests it kept (`_offer`) without running Python beyond the executor's `run_direct`; it
    hands every other frame to `_handle`. Without it, `_serve_in_python` does the same."""

    def __init__(self, server: ModelServer, sock: socket.socket, uid: int) -> None:
        self.server, self.sock, self.uid = server, sock, uid
        self.region: SharedRegion | None = None
        self.segment_names: set[str] = set()
        self.prepared = PreparedCache()  # layouts validated on `region`
        self.tally = server.tally
        self.lane: compiled.ServerLane | None = None
        self._send_lock: AbstractContextManager[Any] = threading.Lock()
        if server.native:
            self._send_lock = latch = compiled.Latch()  # taken by the lane too
            assert isinstance(self.tally, compiled.Tally)
            readable, spin_us = server.readable.fileno(), server.config.spin_us
            self.lane = compiled.ServerLane(sock.fileno(), readable, self.tally, latch, spin_us)
        # `_serve_in_python`'s read buffer (the lane has its own)
        self._buf = bytearray(0 if self.lane else 2 * (HEADER.size + MAX_BODY_BYTES))
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self.spinner = Spinner(server.config.spin_us)

    def run(self) -> None:
        try:
            if self.lane is not None:
                self._serve_in_c(self.lane)
            else:
                self._serve_in_python()
        except (EOFError, OSError):
            pass  # the client went away, possibly mid-message
        except _FrameError as exc:
            self._send(Kind.ERROR, 0, error_reply(_malformed(str(exc))))
        finally:
            self._cleanup()

    def _serve_in_c(self, lane: compiled.ServerLane) -> None:
        while True:
            kind, request_id, body = lane.serve()  # after serving every kept request before it
            if kind < 0:  # not a fleetinfer header: say what is wrong with it
                _checked_header(body)
                raise _FrameError(f"frame header {body!r} refused")
            if kind != Kind.INFER:
                self._handle(kind, request_id, body)
                continue
            prepared = self._cached(body)
            if not self._submit_kept(request_id, prepared):
                self._handle(kind, request_id, body)
            if prepared is not None:  # a layout sent again (a long-way request comes once):
                self._offer(lane, body)  # the lane serves it from now on

    def _serve_in_python(self) -> None:
        while True:
            if self._start == self._end and self.region is not None:
                self.spinner.spin(self.server.others_need_the_gil)
            kind, request_id, body = self._read_frame()
            self.spinner.answered()
            self.tally.read()
            if kind != Kind.INFER or not self._run_repeated(request_id, self._cached(body)):
                self._handle(kind, request_id, body)

    def _submit_kept(self, request_id: int, prepared: Prepared | None) -> bool:
        """A kept request the lane handed back (its model was busy: the lane tried it
        already) goes straight to its executor, which runs it if an instance freed up
        meanwhile or queues it for a merged batch. False, nothing done, for any other
        request, or if the executor closed: `_handle` takes it the long way."""
        if prepared is None or prepared.slot.plan is None:
            return False
        return prepared.executor.submit(prepared.pending(self, request_id))

    def _offer(self, lane: compiled.ServerLane, body: bytes) -> None:
        """After `_handle` ran a request whose layout was cached: if it has a direct plan
        (made by its first run), the lane serves it from now on, as `_run_repeated` would."""
        prepared = self._cached(body)  # again: `_handle` may have prepared it anew
        if prepared is None or prepared.slot.plan is None:
            return
        plan, region = prepared.slot.plan, prepared.region
        lane.keep(
            body,
            prepared.executor.run_direct,
            (plan, prepared.batch),
            plan.reply,
            self.server.registry,
            prepared.generation,
            region.fd,
            region.size_bytes,
        )

    def shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def reply_ok(self, request_id: int, body: InferReply | bytes) -> None:
        self._answer(Kind.OK, request_id, body)

    def reply_error(self, request_id: int, exc: FleetinferError) -> None:
        self._answer(Kind.ERROR, request_id, error_reply(exc))

    def _answer(self, kind: int, request_id: int, body: msgspec.Struct | bytes) -> None:
        """The one reply to a request `run` has read; counted out first, so that a client that
        has its reply never sees the request still in flight."""
        data = frame(kind, request_id, body)
        with self._send_lock:
            self.tally.answered()
            try:  # noqa: SIM105 - on every request: `suppress` would cost two Python calls
                self.sock.sendall(data)
            except OSError:
                pass  # the client went away: `run` notices and cleans up

    def _send(self, kind: int, request_id: int, body: msgspec.Struct | bytes) -> None:
        data = frame(kind, request_id, body)
        with self._send_lock, contextlib.suppress(OSError):
            self.sock.sendall(data)

    def _read_frame(self) -> tuple[int, int, bytes]:
        """The next frame; its header and body usually came in one recv."""
        if self._end - self._start < HEADER.size:
            self._fill(HEADER.size)
        kind, request_id, length = _checked_header(self._buf, self._start)
        if self._end - self._start < HEADER.size + length:
            self._fill(HEADER.size + length)
        start = self._start + HEADER.size
        body = bytes(self._view[start : start + length])
        self._start = start + length
        if self._start == self._end:
            self._start = self._end = 0
        return kind, request_id, body

    def _fill(self, n: int) -> None:
        """Receive until the buffer holds at least `n` unread bytes; EOFError if the client
        closed the connection."""
        while self._end - self._start < n:
            if self._start:
                self._buf[: self._end - self._start] = self._buf[self._start : self._end]
                self._start, self._end = 0, self._end - self._start
            got = self.sock.recv_into(self._view[self._end :])
            if got == 0:
                raise EOFError
            self._end += got

    def _handle(self, kind: int, request_id: int, body: bytes) -> None:
        try:
            self._dispatch(kind, request_id, body)
        except FleetinferError as exc:
            self.reply_error(request_id, exc)
        except Exception as exc:  # a server bug must not take the server down
            log.exception("request kind %d failed", kind)
            self.reply_error(request_id, FleetinferError(f"internal server error: {exc!r}"))

    def _dispatch(self, kind: int, request_id: int, body: bytes) -> None:
        if kind == Kind.INFER:
            self._infer(request_id, body)
        elif kind == Kind.ATTACH:
            self._attach(decode(Attach, body))
            self._answer(Kind.OK, request_id, Empty())
        elif kind == Kind.MODEL_INFO:
            self._answer(Kind.OK, request_id, self._model_info(decode(ModelInfoRequest, body)))
        elif kind == Kind.CONTROL:
            self._answer(Kind.OK, request_id, self._control(decode(ControlRequest, body)))
        else:
            raise _malformed(
                f"unknown frame kind {kind}: expected one of 1 (attach), 2 (infer), 3, 4"
            )

    def _cached(self, body: bytes) -> Prepared | None:
        """The validated layout of a request body this connection sent before, if still valid."""
        return self.prepared.get(body, self.server.registry.generation)

    def _run_repeated(self, request_id: int, prepared: Prepared | None) -> bool:
        """The fast lane, tried first for every request: one this connection sent before, byte
        for byte (`prepared`), whose direct plan is made, runs right here when its model is idle
        (`ModelExecutor.run_planned`). False, with nothing done, otherwise: `_infer` then
        takes it the long way, errors included."""
        if prepared is None or prepared.slot.plan is None:
            return False
        executor, plan = prepared.executor, prepared.slot.plan
        return executor.run_planned(plan, prepared.region, prepared.batch, self, request_id)

    def _infer(self, request_id: int, body: bytes) -> None:
        if self.region is None:
            raise _malformed("infer before attach: attach a shared-memory region first")
        registry = self.server.registry
        prepared = self.prepared.get(body, registry.generation)
        if prepared is not None:  # the same request as before: decoded and validated already
            if self._run(prepared, request_id):  # `run` tried the fast lane already
                return
            self.prepared.discard(body)  # its executor closed in a reload
        request = decode(InferRequest, body)
        for _ in range(3):  # a reload may close the executor we resolved: resolve again
            generation = registry.generation
            executor = registry.resolve(request.model, request.version or None)
            try:
                prepared = prepare(
                    executor, generation, request, self.region, self.server.config.max_request_bytes
                )
            except FleetinferError:
                executor.stats.failed()
                raise
            if self._run(prepared, request_id):
                self.prepared.put(body, prepared)
                return
        raise FleetinferError(f"model {request.model!r} kept changing during the request: retry")

    def _run(self, prepared: Prepared, request_id: int) -> bool:
        """Run a validated layout as this request; False if its executor closed meanwhile."""
        return prepared.executor.submit(prepared.pending(self, request_id))

    def _attach(self, attach: Attach) -> None:
        region = SharedRegion.attach(
            attach.name,
            attach.size_bytes,
            max_bytes=self.server.config.max_region_bytes,
            uid=self.uid,
        )
        old, self.region = self.region, region
        self.prepared.clear()  # its layouts point into the old mapping
        if self.lane is not None:
            self.lane.clear()
        self.segment_names.add(region.name)
        if old is not None:
            old.close()
            if old.name != region.name:
                unlink_segment(old.name)
                self.segment_names.discard(old.name)

    def _model_info(self, request: ModelInfoRequest) -> ModelInfo:
        executor = self.server.registry.resolve(request.model)
        loaded = self.server.registry.loaded().get(request.model, ())
        return ModelInfo(request.model, loaded, executor.config.max_batch_size)

    def _control(self, request: ControlRequest) -> ControlReply:
        registry, version = self.server.registry, request.version or None
        if request.action in ("load", "unload"):
            self._check_model_control(request.action)
            checked_model_name(request.model)
        if request.action == "load":
            registry.load(request.model, version)
        elif request.action == "unload":
            registry.unload(request.model, version)
        elif request.action == "reload":
            _raise_first(self.server.reload(request.model or None))
        elif request.action != "status":
            raise _malformed(
                f"unknown control action {request.action!r}: load, unload, reload, status"
            )
        return ControlReply(registry.loaded())

    def _check_model_control(self, action: str) -> None:
        """`load` and `unload` change what every client is served: only the server's own user,
        and only when the server was started with model control on."""
        if not self.server.config.model_control:
            raise ConfigError(
                f"control {action!r} is off on this server: it serves what its repository's "
                "version policies say; start it with --allow-model-control to load and unload "
                "models by hand, or change the repository and reload"
            )
        if self.uid != os.getuid():
            raise ConfigError(
                f"control {action!r} is allowed only to the server's own user (uid "
                f"{os.getuid()}), not to uid {self.uid}"
            )

    def _cleanup(self) -> None:
        self.server.forget(self)
        if self.lane is not None:
            self.lane.close()  # its layouts hold executors (a reload may retire them); its pages
        if self.region is not None:
            self.region.close()
            self.region = None
        for name in self.segment_names:
            unlink_segment(name)
        self.sock.close()


def _malformed(message: str) -> FleetinferError:
    return MalformedMessageError(message)


def _raise_first(failures: list[FleetinferError]) -> None:
    """A reload's failures as one error for the control reply (they are logged already)."""
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise FleetinferError(
            f"reload failed for {len(failures)} models, still serving the versions loaded "
            "before: " + "; ".join(str(f) for f in failures)
        )


def start_server(config: ServerConfig) -> ModelServer:
    """A started server; one that fails to start is stopped (its socket and threads released)
    and its `FleetinferError` raised, for `fleetinfer serve` and the node's server process."""
    server = ModelServer(config)
    try:
        server.start()
    except FleetinferError:
        server.stop()
        raise
    return server
