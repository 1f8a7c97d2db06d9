"""The smallest fleetinfer app: one task, no model.

fleetinfer submit examples.hello:square payloads.jsonl
fleetinfer run examples.hello:app --exit-when-empty
"""

from __future__ import annotations

from typing import Any

from fleetinfer import App, Reject, TaskContext

app = App("hello")


@app.task(max_receives=3)
def square(ctx: TaskContext, payload: Any) -> dict[str, Any]:
    """Square `payload["n"]`; a payload without an integer `n` is rejected, not retried."""
    n = payload.get("n") if isinstance(payload, dict) else None
    if not isinstance(n, int):
        raise Reject(f"expected a payload like {{'n': 3}}, got {payload!r}")
    ctx.logger.debug("task %s squares %d", ctx.task_id, n)
    return {"n": n, "square": n * n}
