"""A tiny model-using task: score `n` feature vectors made from a seed with the `tiny` MLP.

    fleetinfer bench examples.tinyapp.tasks:score --models examples/tinyapp/models \
        --payloads examples/tinyapp/payloads.jsonl --tasks 10

The payload is `{"seed": 7, "n": 4}`: `n` model calls of one 64-feature row each, with a little
numpy work around each call (the task's "CPU stage"). The result is the sum of the scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fleetinfer import App, Reject, TaskContext

app = App("tinyapp")

FEATURES = 64


def _field(payload: Any, name: str) -> int:
    value = payload.get(name) if isinstance(payload, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Reject(f"expected a payload like {{'seed': 7, 'n': 4}}, got {payload!r:.120}")
    return value


@app.task(max_receives=3)
def score(ctx: TaskContext, payload: Any) -> dict[str, Any]:
    """Score `n` random rows (seeded) with the `tiny` model; return the total score."""
    seed, n = _field(payload, "seed"), _field(payload, "n")
    rng = np.random.default_rng(seed)
    model = ctx.model("tiny")
    total = 0.0
    for _ in range(n):
        row = np.tanh(rng.standard_normal((1, FEATURES)).astype(np.float32))
        total += float(model.infer({"x": row})["score"].sum())
    return {"seed": seed, "n": n, "score": round(total, 6)}
