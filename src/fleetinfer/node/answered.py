"""Which model versions answered a task's model calls, for its result row (`TaskResult.models`).

The first `ctx.model(name)` of a task reads the versions the client's server has loaded; the end
of the task reads them again. A call resolves to the newest loaded version, so the newest before
and the newest after name what answered; a hot swap between them (a rollout reaching this node
mid-task) shows as both, `cdnet@1|2`. The shared server answers `versions` over its socket, the
in-process client from its session; with Triton the row names the model alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fleetinfer.errors import FleetinferError, TransientError


def loaded_versions(client: Any, name: str) -> tuple[int, ...]:
    """The versions of `name` the client would be answered by; () when it cannot tell. A server
    that does not answer (`TransientError`: a deadline passed, it is unreachable) is raised: the
    task's model calls would wait on it the same way."""
    try:
        versions = getattr(client, "versions", None)
        if versions is not None:
            return tuple(versions(name))
        session = getattr(client, "session", None)
        if session is not None:
            return (int(session(name, None).model.version),)
    except TransientError:
        raise
    except FleetinferError:
        return ()
    return ()


class AnsweredBy:
    """One task's model names, with the newest loaded version before and after it ran."""

    def __init__(self, versions: Callable[[str], tuple[int, ...]]) -> None:
        self._versions = versions
        self._before: dict[str, tuple[int, ...]] = {}

    def first_use(self, name: str) -> None:
        if name not in self._before:
            self._before[name] = self._versions(name)

    def models(self, *, look: bool = True) -> str:
        """`cdnet@2,cdnet-l@1`; empty when the task called no model. With `look=False` (the task
        failed on its server), or once the server stops answering, the versions seen before."""
        parts = []
        for name, before in sorted(self._before.items()):
            after: tuple[int, ...] = ()
            if look:
                try:
                    after = self._versions(name)
                except TransientError:  # the result matters more than its version: no wait
                    look = False
            seen = sorted(set(before[-1:]) | set(after[-1:]))
            parts.append(f"{name}@{'|'.join(str(v) for v in seen)}" if seen else name)
        return ",".join(parts)
