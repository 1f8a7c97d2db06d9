"""How long a model call may wait for its reply before it fails with `ModelDeadlineError`.

A hung model server (a stuck native call, a swapped-out or stopped process) must not hold a
worker, and the message it leases, forever. Each call of the shared client therefore has a
deadline, per model:

    a fixed number of seconds named for the model        "cdnet=20"
    a fixed number for every model not named             "30"
    otherwise derived: max(floor_s, factor × the slowest recent call of that model)

The slowest recent call is measured by the client itself, from send to reply, so it includes
the time the request queued behind the other workers' calls: with eight workers on a model
that takes 2 s a call, calls take up to 16 s and the deadline follows. The floor (30 s) keeps a
first call, or a model whose calls are all fast, from failing over a passing stall.

Configuration text: comma-separated `model=seconds` pairs and at most one bare number, e.g.
`"cdnet=20,affine=2,60"`; the node passes it to its workers in `$FLEETINFER_MODEL_DEADLINE_S`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from fleetinfer.errors import ConfigError

DEADLINE_ENV = "FLEETINFER_MODEL_DEADLINE_S"
DEFAULT_FLOOR_S = 30.0
LATENCY_FACTOR = 20.0
SLOWEST_DECAY = 0.99  # each call lets the remembered slowest call fade by 1 %
STEP_S = 0.5  # deadlines are rounded up to this step, so the socket's timeout rarely changes


@dataclass(slots=True, kw_only=True)
class ModelDeadlines:
    """Deadline of each model's calls; `observe` feeds the derived default."""

    per_model_s: dict[str, float] = field(default_factory=dict)
    default_s: float | None = None
    floor_s: float = DEFAULT_FLOOR_S
    factor: float = LATENCY_FACTOR
    _slowest_s: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, seconds in [*self.per_model_s.items(), ("(default)", self.default_s)]:
            if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
                raise ConfigError(
                    f"model deadline for {name} must be a positive number of seconds, "
                    f"got {seconds!r}"
                )

    @classmethod
    def parse(cls, text: str | None) -> ModelDeadlines:
        """From `"cdnet=20,affine=2,60"` (see the module docstring); empty or None: derived."""
        per_model: dict[str, float] = {}
        default_s: float | None = None
        for part in filter(None, (p.strip() for p in (text or "").split(","))):
            name, _, value = part.rpartition("=")
            seconds = _seconds(value, part)
            if name:
                per_model[name.strip()] = seconds
            else:
                default_s = seconds
        return cls(per_model_s=per_model, default_s=default_s)

    @classmethod
    def from_environment(cls) -> ModelDeadlines:
        return cls.parse(os.environ.get(DEADLINE_ENV))

    def deadline_s(self, model: str) -> float:
        """Seconds the next call of `model` may wait for its reply."""
        fixed = self.per_model_s.get(model, self.default_s)
        if fixed is not None:
            return fixed
        derived = max(self.floor_s, self.factor * self._slowest_s.get(model, 0.0))
        return math.ceil(derived / STEP_S) * STEP_S

    def longest_fixed_s(self) -> float | None:
        """The longest deadline given in the configuration; None when every one is derived."""
        fixed = [*self.per_model_s.values(), *([] if self.default_s is None else [self.default_s])]
        return max(fixed) if fixed and self.default_s is not None else None

    def observe(self, model: str, seconds: float) -> None:
        """A call of `model` was answered after `seconds`."""
        slowest = self._slowest_s.get(model, 0.0) * SLOWEST_DECAY
        self._slowest_s[model] = seconds if seconds > slowest else slowest


def _seconds(value: str, part: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(
            f"model deadline {part!r} is not `model=seconds` or `seconds`: expected text like "
            "'cdnet=20,60' (60 s for every other model)"
        ) from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"model deadline {part!r} must be a positive number of seconds")
    return seconds
