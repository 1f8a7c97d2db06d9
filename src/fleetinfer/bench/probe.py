"""The task under benchmark, wrapped to count its model calls: `fleetinfer.bench.probe:app`.

Every mode runs the user's task through this wrapper, so model calls are counted the same way
whatever serves the model (in process, the node's server, Triton): each `ctx.model(name)` handle
is wrapped and each `infer` counted and timed. The wrapped task's result is stored as
`{"value": <the task's result>, "model_calls": <count>, "model_wall_s": <seconds inside the
calls>, "task_cpu_s": <CPU seconds of the task's process during the task>}`; the task's code is
not changed.

Worker processes import this module by name, so the target comes from the environment
(`FLEETINFER_BENCH_TARGET=module:task`), set by the benchmark runner before it starts a node.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetinfer.errors import ConfigError
from fleetinfer.task import App, Task, TaskContext, resolve_target

if TYPE_CHECKING:
    from fleetinfer.client import ModelHandle, Tensors

TARGET_ENV = "FLEETINFER_BENCH_TARGET"
PROBE_TARGET = "fleetinfer.bench.probe:app"


class CallTally:
    """A task's model calls: how many, and the wall seconds the task spent inside them
    (waiting for the model: its queueing and transport included)."""

    __slots__ = ("calls", "wall_s")

    def __init__(self) -> None:
        self.calls, self.wall_s = 0, 0.0


class CountingHandle:
    """A model handle that counts and times its `infer` calls into a shared `CallTally`."""

    def __init__(self, handle: ModelHandle, tally: CallTally) -> None:
        self._handle, self._tally = handle, tally

    def infer(self, inputs: Mapping[str, Any], *, version: int | None = None) -> Tensors:
        self._tally.calls += 1
        started = time.perf_counter()
        try:
            return self._handle.infer(inputs, version=version)
        finally:
            self._tally.wall_s += time.perf_counter() - started

    def empty(self, shape: tuple[int, ...], dtype: Any = "float32") -> np.ndarray[Any, Any]:
        return self._handle.empty(shape, dtype)


def counting(task: Task) -> Task:
    """`task`, under the same name and settings, returning its value with its model call count."""

    def run(ctx: TaskContext, payload: Any) -> dict[str, Any]:
        tally = CallTally()
        models = ctx._models

        def model(name: str) -> ModelHandle:
            return CountingHandle(models(name), tally)

        cpu_before = time.process_time()
        value = task(dataclasses.replace(ctx, _models=model), payload)
        return {
            "value": value,
            "model_calls": tally.calls,
            "model_wall_s": tally.wall_s,
            "task_cpu_s": time.process_time() - cpu_before,  # the task's process, all threads
        }

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
