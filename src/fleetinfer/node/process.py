"""The worker process: `python -m fleetinfer.node.process --config-fd FD [--events-fd FD]`.

Started by the node agent with a fresh interpreter (no inherited sockets or broker connections).
SIGTERM and SIGINT stop receiving; a task still running when the grace period ends is released
and the process exits 0. Exit code 3 means the configuration is wrong (the agent stops restarting).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from fleetinfer.errors import ConfigError, FleetinferError
from fleetinfer.node.events import EventSink, MemoryEvents, PipeEvents
from fleetinfer.node.worker import Worker, WorkerConfig

EXIT_OK = 0
EXIT_CONFIG = 3
PR_SET_PDEATHSIG = 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    events: EventSink = PipeEvents(args.events_fd) if args.events_fd >= 0 else MemoryEvents()
    _configure_logging(args.verbose, "text")
    try:
        config = WorkerConfig.decode(_config_text(args))
        _configure_logging(args.verbose, config.log_format)
        if config.nice:
            os.nice(config.nice)  # lower priority: anyone may; the node says why (`NodeConfig`)
        worker = Worker(config, events=events)
    except (ConfigError, FleetinferError, ImportError) as exc:
        events.emit("error", message=f"{type(exc).__name__}: {exc}")
        print(f"worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _install_signals(worker)
    _die_with_parent()
    worker.run()
    return EXIT_OK


def _configure_logging(verbose: bool, log_format: str) -> None:
    from fleetinfer.node.logs import configure_logging

    text = "%(asctime)s worker[%(process)d] %(levelname)s %(name)s: %(message)s"
    configure_logging(verbose=verbose, log_format=log_format, text_format=text)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fleetinfer.node.process")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="WorkerConfig as JSON (visible in ps: no secrets)")
    source.add_argument("--config-fd", type=int, help="pipe holding the WorkerConfig JSON")
    parser.add_argument("--events-fd", type=int, default=-1, help="pipe for JSON-line events")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def _config_text(args: argparse.Namespace) -> str:
    if args.config_fd is not None:
        from fleetinfer.node.configpipe import read_config

        return read_config(args.config_fd)
    text: str = args.config
    return text


def _install_signals(worker: Worker) -> None:
    def drain(signum: int, frame: FrameType | None) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when its agent dies, so an orphan drains instead of running on."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the agent's own SIGTERM still reaches us
        pass


if __name__ == "__main__":
    sys.exit(main())
