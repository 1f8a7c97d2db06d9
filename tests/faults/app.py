"""Tasks for the fault-injection suite: `tests.faults.app:app`."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from typing import Any

import numpy as np

from fleetinfer.task import App, TaskContext

app = App("faults")


@app.task
def nap(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Sleep `s` seconds: work in flight when a signal comes."""
    time.sleep(payload["s"])
    return {"slept_s": payload["s"]}


@app.task
def model_nap(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Call the `affine` model of the node's server, then sleep `s` seconds."""
    outputs = ctx.model("affine").infer({"x": np.full((1, 4), payload["x"], np.float32)})
    time.sleep(payload.get("s", 0.0))
    return {"y": float(outputs["y"][0][0])}


@app.task
def killed_after_store(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    """On its first receive the worker dies by SIGKILL right after it stored this result and
    before it acked the message: a thread holds the sqlite queue's write lock (the ack waits),
    watches the results database for this task's row, and kills the process once it is there."""
    if ctx.receive_count == 1:
        threading.Thread(
            target=_kill_once_stored,
            args=(payload["queue_db"], payload["results_db"], ctx.task_id),
            daemon=True,
        ).start()
        time.sleep(0.2)  # the thread holds the lock before the result is stored
    return {"stored": True}


def _kill_once_stored(queue_db: str, results_db: str, task_id: str) -> None:
    lock = sqlite3.connect(queue_db, timeout=30, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    results = sqlite3.connect(results_db, timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            row = results.execute(
                "SELECT 1 FROM fleetinfer_results WHERE task_id = ?", (task_id,)
            ).fetchone()
        except sqlite3.OperationalError:  # the table is not made yet
            row = None
        if row is not None:
            break
        time.sleep(0.001)
    time.sleep(0.05)  # the worker's event, if it reports before the ack, is out by now
    os.kill(os.getpid(), signal.SIGKILL)
