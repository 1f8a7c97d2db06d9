"""`tests.apps.cdnet_jobs:app`: one small CDNet call per task, returning the node that ran it."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from fleetinfer.task import App, TaskContext

app = App("cdnet_jobs")


@app.task
def cdnet_window(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    raster = np.full((1, 9, 128, 128), payload["v"], dtype=np.float32)
    outputs = ctx.model("cdnet").infer({"raster": raster})
    changed = float(np.asarray(outputs["changed_logit"]).reshape(-1)[0])
    return {"changed_logit": changed, "node": os.environ.get("FLEETINFER_NODE_NAME", "")}
