"""Worker-side model clients: task code calls `ctx.model("cdnet").infer({...})` and never changes.

Modes, chosen by configuration:
- `inprocess`: the worker process loads its own ONNX Runtime session (the isolated baseline);
- `shared`: the node's model server over a Unix socket and shared memory (`fleetinfer serve`);
- `triton`: a Triton server through tritonclient (benchmark comparison).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar

import numpy as np

from fleetinfer.deadlines import ModelDeadlines
from fleetinfer.errors import (
    ConfigError,
    ModelDeadlineError,
    ServerUnavailableError,
    UnknownModelError,
)
from fleetinfer.server.channel import ATTACH_TIMEOUT_S, REPLY_SPIN_US, Channel, ChannelBrokenError
from fleetinfer.server.protocol import ControlReply, ModelInfo, default_socket_path
from fleetinfer.server.repository import ModelRepository

if TYPE_CHECKING:  # onnxruntime and http.client are imported only by the modes that use them
    import http.client

    from fleetinfer.server.session import OrtModel

CLIENT_MODES = ("inprocess", "shared", "triton")

Tensors = dict[str, np.ndarray[Any, Any]]
T = TypeVar("T")
P = ParamSpec("P")


class ModelHandle(Protocol):
    """What task code holds: one model, callable with named arrays."""

    def infer(self, inputs: Mapping[str, Any], *, version: int | None = None) -> Tensors: ...

    def empty(self, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray[Any, Any]:
        """An array to fill with an input; see `ModelClient.empty` (no copy in `shared` mode)."""
        ...


class ModelClient(ABC):
    """Hands out `ModelHandle`s by model name."""

    @staticmethod
    def from_mode(
        mode: str,
        *,
        repository: Path | str | None = None,
        intra_op_threads: int | None = None,
        socket_path: Path | str | None = None,
        url: str | None = None,
    ) -> ModelClient:
        """`inprocess` needs `repository`; `shared` uses `socket_path` (default: the server's
        default path, `$FLEETINFER_SOCKET`); `triton` needs `url`, the host:port of a Triton
        server's HTTP endpoint (KServe v2 protocol with binary tensors)."""
        if mode == "inprocess":
            if repository is None:
                raise ConfigError("model client mode 'inprocess' needs repository=<model repo>")
            return InProcessModelClient(repository, intra_op_threads=intra_op_threads)
        if mode == "shared":
            return SharedModelClient(socket_path)
        if mode == "triton":
            if url is None:
                raise ConfigError("model client mode 'triton' needs url='127.0.0.1:8000'")
            return TritonModelClient(url, repository=repository)
        raise ConfigError(f"unknown model client mode {mode!r}: expected one of {CLIENT_MODES}")

    @abstractmethod
    def model(self, name: str) -> ModelHandle:
        """A handle for `name`; unknown names raise `UnknownModelError`."""

    def empty(self, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray[Any, Any]:
        """An uninitialised array to fill with a model input. In `shared` mode it lies in this
        thread's shared-memory region, so `infer` passes it to the server without a copy; in the
        other modes it is a plain array. Task code that uses it runs unchanged in every mode."""
        return np.empty(shape, dtype)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions and connections."""


class _InProcessHandle:
    def __init__(self, client: InProcessModelClient, name: str) -> None:
        self._client, self._name = client, name

    def infer(self, inputs: Mapping[str, Any], *, version: int | None = None) -> Tensors:
        return self._client.session(self._name, version).infer(inputs)

    def empty(self, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray[Any, Any]:
        return self._client.empty(shape, dtype)


class InProcessModelClient(ModelClient):
    """Each process its own ONNX Runtime sessions, loaded on first use and kept."""

    def __init__(self, repository: Path | str, *, intra_op_threads: int | None = None) -> None:
        self.repository = ModelRepository(repository)
        self.intra_op_threads = intra_op_threads
        self._sessions: dict[tuple[str, int], OrtModel] = {}
        self._by_request: dict[tuple[str, int | None], OrtModel] = {}
        self._lock = threading.Lock()

    def model(self, name: str) -> ModelHandle:
        self.repository.config(name)  # unknown names fail here, not at the first call
        return _InProcessHandle(self, name)

    def session(self, name: str, version: int | None) -> OrtModel:
        """The session for `name` (newest served version when `version` is None), loaded once:
        later calls are a dictionary lookup, not a repository scan."""
        session = self._by_request.get((name, version))
        if session is not None:
            return session
        from fleetinfer.server.session import OrtModel

        resolved = self.repository.resolve(name, version)
        key = (name, resolved.version)
        with self._lock:
            if key not in self._sessions:
                self._sessions[key] = OrtModel(resolved, intra_op_threads=self.intra_op_threads)
            self._by_request[(name, version)] = self._sessions[key]
            return self._sessions[key]

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()
            self._by_request.clear()


class _RemoteHandle:
    """A model served by another process (`shared` or `triton`): calls go through its client."""

    def __init__(self, client: SharedModelClient | TritonModelClient, name: str) -> None:
        self._client, self._name = client, name

    def infer(self, inputs: Mapping[str, Any], *, version: int | None = None) -> Tensors:
        return self._client.infer(self._name, inputs, version=version)

    def empty(self, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray[Any, Any]:
        return self._client.empty(shape, dtype)


class SharedModelClient(ModelClient):
    """The node's model server: one connection and one shared-memory region per thread.

    A broken connection (server restarted) is re-opened, waiting up to `connect_timeout_s` for the
    server to come back, and the request is retried once (inference is idempotent).

    The region starts at `region_bytes` (16 MiB). Its pages cost memory only once written, and
    the allocator reuses the lowest offsets first, so a large start costs nothing while it saves
    the regrowth (and the copying out of outputs) that a region too small for a model's inputs,
    outputs and the arrays the caller keeps would need.

    After sending a request the caller polls for the reply for up to `spin_us` before it blocks
    (0: block at once), which saves the wake-up of a blocked process (`fleetinfer.server.spin`).

    Every request has a reply deadline: a model call the one `deadlines` gives that model
    (default: `$FLEETINFER_MODEL_DEADLINE_S`, else derived from the calls' measured latency,
    `fleetinfer.deadlines`; a question about the model too), a connection's first request
    (attach) `attach_timeout_s`, a control request `request_timeout_s`. A request past its deadline raises
    `ModelDeadlineError` (transient) and is not retried; its connection is dropped, since a late
    reply would put it out of step.
    """

    def __init__(
        self,
        socket_path: Path | str | None = None,
        *,
        connect_timeout_s: float = 5.0,
        region_bytes: int = 16 << 20,
        max_region_bytes: int = 4 << 30,
        spin_us: float = REPLY_SPIN_US,
        deadlines: ModelDeadlines | None = None,
        attach_timeout_s: float = ATTACH_TIMEOUT_S,
        request_timeout_s: float = ATTACH_TIMEOUT_S,
    ) -> None:
        self.socket_path = Path(socket_path) if socket_path else default_socket_path()
        self.connect_timeout_s = connect_timeout_s
        self.deadlines = deadlines if deadlines is not None else ModelDeadlines.from_environment()
        longest_s = self.deadlines.longest_fixed_s()  # a (re)connection waits no call's longer
        if longest_s is not None:
            attach_timeout_s = min(attach_timeout_s, longest_s)
        self.attach_timeout_s, self.request_timeout_s = attach_timeout_s, request_timeout_s
        self.region_bytes, self.max_region_bytes = region_bytes, max_region_bytes
        self.spin_us = spin_us
        self._forget_channels()
        _LIVE_CLIENTS.add(self)

    def _forget_channels(self) -> None:
        """No channel yet; also what a forked child does with its parent's (`_after_fork`)."""
        self._local = threading.local()
        self._channels: list[Channel] = []
        self._lock = threading.Lock()

    def model(self, name: str) -> ModelHandle:
        self._call(_model_info, name, self.deadlines.deadline_s(name))  # unknown names fail here
        return _RemoteHandle(self, name)

    def infer(
        self, model: str, inputs: Mapping[str, Any], *, version: int | None = None
    ) -> Tensors:
        deadlines = self.deadlines
        deadline_s = deadlines.deadline_s(model)
        started = time.monotonic()
        channel: Channel = getattr(self._local, "channel", None) or self._channel()
        try:  # `_call`, inlined: each Python call on this path costs CPU a model call needs
            if channel.deadline_s != deadline_s:
                channel.set_deadline(deadline_s)
            outputs = channel.infer(model, inputs, version)
        except ChannelBrokenError:
            self._drop(channel)
            outputs = self._retry_infer(model, inputs, version, deadline_s)
        except ModelDeadlineError:
            self._drop(channel)
            raise
        deadlines.observe(model, time.monotonic() - started)
        return outputs

    def _retry_infer(
        self, model: str, inputs: Mapping[str, Any], version: int | None, deadline_s: float
    ) -> Tensors:
        channel = self._channel()
        channel.set_deadline(deadline_s)
        return self._retry(Channel.infer, model, inputs, version)

    def empty(self, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray[Any, Any]:
        return self._call(Channel.empty, tuple(shape), np.dtype(dtype))

    def versions(self, model: str) -> tuple[int, ...]:
        return self._call(_model_info, model, self.deadlines.deadline_s(model)).versions

    def control(
        self, action: str, model: str = "", version: int | None = None
    ) -> dict[str, tuple[int, ...]]:
        """`load` / `unload` / `reload` a model (or a version) in the server; `status`.
        Returns the loaded versions of every model afterwards."""
        return self._call(_control, action, model, version, self.request_timeout_s).loaded

    def close(self) -> None:
        with self._lock:
            channels, self._channels = self._channels, []
        for channel in channels:
            channel.close()
        self._local = threading.local()

    def _call(
        self, request: Callable[Concatenate[Channel, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        channel = self._channel()
        try:
            return request(channel, *args, **kwargs)
        except ChannelBrokenError:
            self._drop(channel)
        except ModelDeadlineError:
            self._drop(channel)
            raise
        return self._retry(request, *args, **kwargs)

    def _retry(
        self, request: Callable[Concatenate[Channel, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """The connection broke (the server restarted): reconnect and send the request once more."""
        channel = self._channel()
        try:
            return request(channel, *args, **kwargs)
        except ChannelBrokenError as exc:
            self._drop(channel)
            raise ServerUnavailableError(
                f"the model server on {self.socket_path} dropped the request twice: {exc}"
            ) from exc
        except ModelDeadlineError:
            self._drop(channel)
            raise

    def _channel(self) -> Channel:
        channel: Channel | None = getattr(self._local, "channel", None)
        if channel is None:
            channel = self._connect()
            self._local.channel = channel
            with self._lock:
                self._channels.append(channel)
        return channel

    def _drop(self, channel: Channel) -> None:
        self._local.channel = None
        with self._lock:
            if channel in self._channels:
                self._channels.remove(channel)
        channel.close()

    def _connect(self) -> Channel:
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                return Channel.connect(
                    self.socket_path,
                    region_bytes=self.region_bytes,
                    max_region_bytes=self.max_region_bytes,
                    spin_us=self.spin_us,
                    attach_timeout_s=self.attach_timeout_s,
                )
            except (OSError, ChannelBrokenError) as exc:
                if time.monotonic() >= deadline:
                    raise ServerUnavailableError(
                        f"no model server answers on {self.socket_path} after "
                        f"{self.connect_timeout_s:g} s ({exc}): start one with "
                        "`fleetinfer serve --models <repo>` or point socket_path at it"
                    ) from exc
                time.sleep(0.05)


def _model_info(channel: Channel, model: str, timeout_s: float) -> ModelInfo:
    channel.set_deadline(timeout_s)
    return channel.model_info(model)


def _control(
    channel: Channel, action: str, model: str, version: int | None, timeout_s: float
) -> ControlReply:
    channel.set_deadline(timeout_s)
    return channel.control(action, model, version)


_LIVE_CLIENTS: weakref.WeakSet[SharedModelClient] = weakref.WeakSet()


def _after_fork() -> None:
    """In a forked child: its parent's connections and regions are not its own; each client
    connects anew on its next call (the parent's regions stay the parent's to unlink)."""
    for client in _LIVE_CLIENTS:
        client._forget_channels()


os.register_at_fork(after_in_child=_after_fork)


class TritonModelClient(ModelClient):
    """A Triton (or any KServe v2) server over HTTP; one persistent connection per thread.

    A dropped connection is re-opened and the request retried once (inference is idempotent).
    Given the model `repository` Triton serves, outputs come back in the shapes it declares:
    Triton cannot declare one value per sample (shape [-1]) and returns such an output as
    [batch, 1], which is given back as [batch], as the other modes return it."""

    def __init__(
        self, url: str, *, timeout_s: float = 60.0, repository: Path | str | None = None
    ) -> None:
        self.url = url.removeprefix("http://").rstrip("/")
        self.timeout_s = timeout_s
        self.repository = None if repository is None else ModelRepository(repository)
        self._ranks: dict[str, dict[str, int]] = {}
        self._local = threading.local()

    def model(self, name: str) -> ModelHandle:
        response, _ = self._exchange("GET", f"/v2/models/{name}/ready", None, {})
        status = response.status
        if status != 200:
            raise UnknownModelError(
                f"Triton at {self.url} has no ready model {name!r} (HTTP {status}): "
                "check the model name and the server's model repository"
            )
        return _RemoteHandle(self, name)

    def infer(
        self, model: str, inputs: Mapping[str, Any], *, version: int | None = None
    ) -> Tensors:
        from fleetinfer.server import kserve

        body, header_length = kserve.encode_request(inputs)
        headers = {
            kserve.HEADER_LENGTH: str(header_length),
            "Content-Type": "application/octet-stream",
        }
        path = kserve.infer_path(model, version)
        response, payload = self._exchange("POST", path, body, headers)
        kserve.raise_for_status(response, payload, model)
        length = response.getheader(kserve.HEADER_LENGTH)
        outputs = kserve.decode_response(payload, length)
        return self._declared_shapes(model, outputs)

    def _declared_shapes(self, model: str, outputs: Tensors) -> Tensors:
        if self.repository is None:
            return outputs
        if model not in self._ranks:
            config = self.repository.config(model)
            self._ranks[model] = {spec.name: len(spec.shape) for spec in config.outputs}
        ranks = self._ranks[model]
        for name, array in outputs.items():
            if array.ndim == ranks.get(name, array.ndim) + 1 and array.shape[-1] == 1:
                outputs[name] = array.reshape(array.shape[:-1])
        return outputs

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _exchange(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[http.client.HTTPResponse, bytes]:
        import http.client

        for attempt in (1, 2):
            connection = self._connection()
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                return response, response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if attempt == 2:
                    raise ServerUnavailableError(
                        f"no Triton server answers at http://{self.url} ({exc}): start it or "
                        "fix the url"
                    ) from exc
        raise AssertionError("unreachable")

    def _connection(self) -> http.client.HTTPConnection:
        import http.client

        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(self.url, timeout=self.timeout_s)
            self._local.connection = connection
        return connection
