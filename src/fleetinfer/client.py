"""Worker-side model clients: task code calls `ctx.model("cdnet").infer({...})` and never changes.

Modes, chosen by configuration:
- `inprocess`: the worker process loads its own ONNX Runtime session (the isolated baseline);
- `shared`: the node's model server over a Unix socket and shared memory (model-server issue);
- `triton`: a Triton server through tritonclient (benchmark comparison).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fleetinfer.errors import ConfigError
from fleetinfer.server.repository import ModelRepository
from fleetinfer.server.session import OrtModel

CLIENT_MODES = ("inprocess",)

Tensors = dict[str, np.ndarray[Any, Any]]


class ModelHandle(Protocol):
    """What task code holds: one model, callable with named arrays."""

    def infer(self, inputs: Mapping[str, Any], *, version: int | None = None) -> Tensors: ...


class ModelClient(ABC):
    """Hands out `ModelHandle`s by model name."""

    @staticmethod
    def from_mode(
        mode: str, *, repository: Path | str, intra_op_threads: int | None = None
    ) -> ModelClient:
        if mode == "inprocess":
            return InProcessModelClient(repository, intra_op_threads=intra_op_threads)
        raise ConfigError(f"unknown model client mode {mode!r}: expected one of {CLIENT_MODES}")

    @abstractmethod
    def model(self, name: str) -> ModelHandle:
        """A handle for `name`; unknown names raise `UnknownModelError`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions and connections."""


class _InProcessHandle:
    def __init__(self, client: InProcessModelClient, name: str) -> None:
        self._client, self._name = client, name

    def infer(self, inputs: Mapping[str, Any], *, version: int | None = None) -> Tensors:
        return self._client.session(self._name, version).infer(inputs)


class InProcessModelClient(ModelClient):
    """Each process its own ONNX Runtime sessions, loaded on first use and kept."""

    def __init__(self, repository: Path | str, *, intra_op_threads: int | None = None) -> None:
        self.repository = ModelRepository(repository)
        self.intra_op_threads = intra_op_threads
        self._sessions: dict[tuple[str, int], OrtModel] = {}
        self._lock = threading.Lock()

    def model(self, name: str) -> ModelHandle:
        self.repository.config(name)  # unknown names fail here, not at the first call
        return _InProcessHandle(self, name)

    def session(self, name: str, version: int | None) -> OrtModel:
        resolved = self.repository.resolve(name, version)
        key = (name, resolved.version)
        with self._lock:
            if key not in self._sessions:
                self._sessions[key] = OrtModel(resolved, intra_op_threads=self.intra_op_threads)
            return self._sessions[key]

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()
