"""The worker process: `python -m fleetinfer.node.process --config JSON [--events-fd FD]`.

Started by the node agent with a fresh interpreter (no inherited sockets or broker connections).
SIGTERM and SIGINT stop receiving and ask the agent to drain the node; a task still running when
the grace period ends is released and the process exits 0; SIGUSR1 releases it at once
(`signals.py`). Exit code 3 means the configuration is wrong (the agent stops restarting).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from fleetinfer.errors import ConfigError, FleetinferError
from fleetinfer.node.events import EventSink, MemoryEvents, PipeEvents
from fleetinfer.node.signals import (
    DRAIN_SIGNALS,
    HURRY_SIGNAL,
    agent_alive,
    die_with_parent,
    unblock_drain_signals,
)
from fleetinfer.node.worker import Worker, WorkerConfig

EXIT_OK = 0
EXIT_CONFIG = 3


def main(argv: Sequence[str] | None = None) -> int:
    parent = os.getppid()
    args = _parse(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s worker[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    events: EventSink = PipeEvents(args.events_fd) if args.events_fd >= 0 else MemoryEvents()
    try:
        config = WorkerConfig.decode(args.config)
        if config.nice:
            os.nice(config.nice)  # lower priority: anyone may; the node says why (`NodeConfig`)
        worker = Worker(config, events=events)
    except (ConfigError, FleetinferError, ImportError) as exc:
        events.emit("error", message=f"{type(exc).__name__}: {exc}")
        print(f"worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _install_signals(worker, events, parent)
    die_with_parent(parent)
    unblock_drain_signals()
    worker.run()
    return EXIT_OK


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fleetinfer.node.process")
    parser.add_argument("--config", required=True, help="WorkerConfig as JSON")
    parser.add_argument("--events-fd", type=int, default=-1, help="pipe for JSON-line events")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def _install_signals(worker: Worker, events: EventSink, parent: int) -> None:
    def drain(signum: int, frame: FrameType | None) -> None:
        if os.getppid() != parent:  # the parent-death signal: no agent to ask
            worker.stop(grace_s=None if agent_alive() else 0.0)
            return
        first = not worker.stopping
        worker.stop()
        if first:  # one drain for the node, led by the agent
            events.emit("signal", signal=signal.Signals(signum).name, pid=os.getpid())

    def hurry(signum: int, frame: FrameType | None) -> None:
        worker.stop(grace_s=0.0)

    for signum in DRAIN_SIGNALS:
        signal.signal(signum, drain)
    signal.signal(HURRY_SIGNAL, hurry)


if __name__ == "__main__":
    sys.exit(main())
