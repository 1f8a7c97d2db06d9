"""Apps for placement tests: `tests.apps.placement:app`."""

from __future__ import annotations

import os
import time
from typing import Any

from fleetinfer.task import App, TaskContext

app = App("placement")


@app.task(requires={"arch": "arm64"})
def arm_only(ctx: TaskContext, payload: Any) -> dict[str, Any]:
    """A task that declares it needs an arm64 node."""
    return {"ran_on": os.getpid(), "payload": payload}


@app.task
def anywhere(ctx: TaskContext, payload: Any) -> dict[str, Any]:
    return {"ran_on": os.getpid(), "payload": payload}


@app.task
def affine_where(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    """The `affine` model on one row, and which model server (socket) answered it."""
    import numpy as np

    handle = ctx.model("affine")
    outputs = handle.infer({"x": np.asarray([payload["x"]], dtype=np.float32)})
    time.sleep(payload.get("sleep_s", 0.0))  # so that every worker gets tasks
    socket = str(handle._client.socket_path)  # type: ignore[attr-defined]
    return {"y": outputs["y"][0].tolist(), "socket": socket, "pid": os.getpid()}
