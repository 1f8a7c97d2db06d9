"""The compiled request paths (`_native.c`), when the build had a C compiler.

Both ends of a repeated request run in C when it is built: the client's `Lane` (a channel's
repeated calls) and the server's `ServerLane` (a connection's kept requests). Everything they do
has a pure-Python twin, which runs where the module is missing or `FLEETINFER_NATIVE=0` is set
(the benchmark's Python rows, and the tests of both)."""

from __future__ import annotations

import os

__all__ = ["NATIVE_ENV", "compiled", "native_available"]

try:
    from fleetinfer.server import _native as compiled
except ImportError:  # built without a C compiler
    compiled = None  # type: ignore[assignment]

NATIVE_ENV = "FLEETINFER_NATIVE"  # "0": the pure-Python paths even where the C ones are built


def native_available() -> bool:
    """Whether new channels and connections use the compiled paths."""
    return compiled is not None and os.environ.get(NATIVE_ENV, "1") != "0"
