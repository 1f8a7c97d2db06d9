"""A small app: `tests.apps.jobs:app` (every task) or `tests.apps.jobs:square` (one task)."""

from __future__ import annotations

import os
import time
from typing import Any

from fleetinfer.task import App, Reject, Retry, TaskContext

app = App("jobs")


@app.task
def square(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Square `x`, after spinning for `work_ms` (a few ms of CPU, like a tiny real task)."""
    deadline = time.perf_counter() + payload.get("work_ms", 0) / 1000.0
    while time.perf_counter() < deadline:
        pass
    return {"x": payload["x"], "square": payload["x"] ** 2, "pid": os.getpid()}


@app.task
def nap(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Sleep `s` seconds (in-flight work for drain tests)."""
    time.sleep(payload["s"])
    return {"slept_s": payload["s"]}


@app.task(max_receives=3)
def always_fails(ctx: TaskContext, payload: Any) -> None:
    raise ValueError(f"cannot process {payload!r} (receive {ctx.receive_count})")


@app.task
def retry_once(ctx: TaskContext, payload: Any) -> dict[str, int]:
    if ctx.receive_count == 1:
        raise Retry(delay_s=0.0)
    return {"receives": ctx.receive_count}


@app.task
def reject(ctx: TaskContext, payload: Any) -> None:
    raise Reject(f"payload {payload!r} is not a road segment")


@app.task(timeout_s=0.2)
def too_slow(ctx: TaskContext, payload: Any) -> None:
    time.sleep(5)


@app.task
def not_json(ctx: TaskContext, payload: Any) -> object:
    return object()


@app.task
def needs_model(ctx: TaskContext, payload: Any) -> None:
    ctx.model("cdnet")


@app.task
def affine(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Run the `affine` model of the worker's repository on one row `x`. With
    $FLEETINFER_DRILL_STARTED set (the fleet drill's nodes), the task id is appended to that
    file first: which tasks a node had started when it vanished; $FLEETINFER_DRILL_TASK_S makes
    each task take that long (the node that will vanish)."""
    import os

    import numpy as np

    started = os.environ.get("FLEETINFER_DRILL_STARTED")
    if started:
        with open(started, "a", encoding="utf-8") as log:
            log.write(ctx.task_id + "\n")
    time.sleep(float(os.environ.get("FLEETINFER_DRILL_TASK_S", "0")))

    outputs = ctx.model("affine").infer({"x": np.asarray([payload["x"]], dtype=np.float32)})
    return {"y": outputs["y"][0].tolist()}


@app.task(max_receives=2)
def always_retry(ctx: TaskContext, payload: Any) -> None:
    raise Retry(delay_s=0.0)
