"""The node's model server process: `python -m fleetinfer.node.server_child --models REPO ...`.

`fleetinfer serve` stops on SIGTERM. Under a node agent the server must instead serve until the
workers have drained, whoever got the signal (`signals.py`), so the agent runs the same
`ModelServer` through this module:

    stdout   JSON lines: {"event": "ready"} once serving, {"event": "signal", "signal": NAME}
             when a SIGTERM / SIGINT came (the agent drains the node)
    stdin    the agent's end: when it closes (the agent stopped it, or died) the server stops
    SIGHUP   re-reads the repository, as `fleetinfer serve` does

It dies with the agent too (parent-death signal), unlinking its socket.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from fleetinfer.errors import FleetinferError
from fleetinfer.node.signals import (
    DRAIN_SIGNALS,
    die_with_parent,
    process_alive,
    unblock_drain_signals,
)
from fleetinfer.server.server import ModelServer, ServerConfig, start_server

EXIT_OK = 0
EXIT_CONFIG = 3

log = logging.getLogger("fleetinfer.serve")


def main(argv: Sequence[str] | None = None) -> int:
    parent = os.getppid()
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s server %(levelname)s: %(message)s")
    stop = threading.Event()
    _install_signals(stop, parent)
    die_with_parent(parent)
    unblock_drain_signals()
    config = ServerConfig(
        models=args.models,
        socket_path=args.socket,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        intra_op_threads=args.intra_op_threads,
        instance_count=args.instances,
    )
    try:
        server = start_server(config)
    except FleetinferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _reload_on_sighup(server)
    threading.Thread(
        target=_stop_at_eof, args=(stop,), name="fleetinfer-stdin", daemon=True
    ).start()
    _say({"event": "ready", "socket": str(args.socket), "metrics_port": server.metrics_port})
    while not stop.wait(0.5) and not server.wait(0):
        pass
    server.stop()
    return EXIT_OK


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fleetinfer.node.server_child")
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--intra-op-threads", type=int, default=None)
    parser.add_argument("--instances", type=int, default=None)
    parser.add_argument("--metrics-port", type=int, default=-1, help="0: any free port; -1: off")
    return parser.parse_args(argv)


def _install_signals(stop: threading.Event, parent: int) -> None:
    def drain(signum: int, frame: FrameType | None) -> None:
        if os.getppid() != parent or not process_alive(parent):  # the agent is gone
            stop.set()
            return
        _say({"event": "signal", "signal": signal.Signals(signum).name})

    for signum in DRAIN_SIGNALS:
        signal.signal(signum, drain)


def _reload_on_sighup(server: ModelServer) -> None:
    def reload(signum: int, frame: FrameType | None) -> None:
        server.reload()  # the one reload path: a bad new version never stops the server

    signal.signal(signal.SIGHUP, reload)


def _stop_at_eof(stop: threading.Event) -> None:
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass
    stop.set()


def _say(event: dict[str, str | int | None]) -> None:
    """One line on stdout with one write (a signal handler may say something meanwhile)."""
    with contextlib.suppress(OSError):  # the agent is gone
        os.write(1, (json.dumps(event) + "\n").encode())


if __name__ == "__main__":
    sys.exit(main())
