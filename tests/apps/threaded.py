"""`tests.apps.threaded:app`: a module that starts a thread when it is imported (as a client
library's background poller would), which a forked worker must not inherit."""

from __future__ import annotations

import os
import threading
from typing import Any

from fleetinfer.task import App, TaskContext

app = App("threaded")
_heartbeat = threading.Event()
threading.Thread(target=_heartbeat.wait, name="import-time-poller", daemon=True).start()


@app.task
def pid(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    return {"pid": os.getpid()}
