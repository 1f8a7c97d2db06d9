"""The task under benchmark, wrapped to count its model calls: `fleetinfer.bench.probe:app`.

Every mode runs the user's task through this wrapper, so model calls are counted the same way
whatever serves the model (in process, the node's server, Triton): each `ctx.model(name)` handle
is wrapped and each `infer` counted. The wrapped task's result is stored as
`{"value": <the task's result>, "model_calls": <count>}`; the task's code is not changed.

Worker processes import this module by name, so the target comes from the environment
(`FLEETINFER_BENCH_TARGET=module:task`), set by the benchmark runner before it starts a node.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetinfer.errors import ConfigError
from fleetinfer.task import App, Task, TaskContext, resolve_target

if TYPE_CHECKING:
    from fleetinfer.client import ModelHandle, Tensors

TARGET_ENV = "FLEETINFER_BENCH_TARGET"
PROBE_TARGET = "fleetinfer.bench.probe:app"


class CountingHandle:
    """A model handle that counts its `infer` calls into a shared one-element list."""

    def __init__(self, handle: ModelHandle, counter: list[int]) -> None:
        self._handle, self._counter = handle, counter

    def infer(self, inputs: Mapping[str, Any], *, version: int | None = None) -> Tensors:
        self._counter[0] += 1
        return self._handle.infer(inputs, version=version)

    def empty(self, shape: tuple[int, ...], dtype: Any = "float32") -> np.ndarray[Any, Any]:
        return self._handle.empty(shape, dtype)


def counting(task: Task) -> Task:
    """`task`, under the same name and settings, returning its value with its model call count."""

    def run(ctx: TaskContext, payload: Any) -> dict[str, Any]:
        counter = [0]
        models = ctx._models

        def model(name: str) -> ModelHandle:
            return CountingHandle(models(name), counter)

        value = task(dataclasses.replace(ctx, _models=model), payload)
        return {"value": value, "model_calls": counter[0]}

    run.__name__ = task.fn.__name__
    return Task(task.name, run, max_receives=task.max_receives, timeout_s=task.timeout_s)


@functools.cache
def probe_app(target: str) -> App:
    """An app holding the one task `target` names, wrapped by `counting`."""
    resolved = resolve_target(target)
    wrapped = App(f"bench-{resolved.app.name}")
    wrapped.add(counting(resolved.app.get(resolved.task_name())))
    return wrapped


def __getattr__(name: str) -> Any:
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    target = os.environ.get(TARGET_ENV)
    if not target:
        raise ConfigError(
            f"{PROBE_TARGET} wraps the task named by ${TARGET_ENV} (module:task), which is unset: "
            "it is set by `fleetinfer bench`, not meant to be run alone"
        )
    return probe_app(target)
