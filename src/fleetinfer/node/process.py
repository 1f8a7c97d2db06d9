"""The worker process: `python -m fleetinfer.node.process --config-fd FD [--events-fd FD]`.

Started by the node agent with a fresh interpreter (no inherited sockets or broker connections).
SIGTERM and SIGINT stop receiving and ask the agent to drain the node; a task still running when
the grace period ends is released and the process exits 0; SIGUSR1 releases it at once
(`signals.py`). Exit code 3 means the configuration is wrong (the agent stops restarting).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType

from fleetinfer.errors import ConfigError, FleetinferError
from fleetinfer.node.events import EventSink, MemoryEvents, PipeEvents
from fleetinfer.node.signals import (
    DRAIN_SIGNALS,
    HURRY_SIGNAL,
    agent_alive,
    die_with_parent,
    process_alive,
    unblock_drain_signals,
)
from fleetinfer.node.worker import Worker, WorkerConfig

EXIT_OK = 0
EXIT_CONFIG = 3
PARENT_CHECK_S = 0.2


def main(argv: Sequence[str] | None = None) -> int:
    parent = os.getppid()
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
    _install_signals(worker, events, parent)
    die_with_parent(parent)
    unblock_drain_signals()
    worker.run()
    return EXIT_OK


def _configure_logging(verbose: bool, log_format: str) -> None:
    from fleetinfer.node.logs import configure_logging

    text = "%(asctime)s worker[%(process)d] %(levelname)s %(name)s: %(message)s"
    configure_logging(verbose=verbose, log_format=log_format, text_format=text)


def _parent_gone(parent: int) -> bool:
    """The parent died. When a parent with several threads dies, its children get the
    parent-death signal as the thread that started them exits, while the process still has
    its pid (they are handed to a thread of the same process), so the pid check alone can miss
    it for a moment."""
    return os.getppid() != parent or not process_alive(parent)


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


def _install_signals(worker: Worker, events: EventSink, parent: int) -> None:
    """Signals are acted on by a thread of their own, woken by the wakeup fd that the C-level
    handler writes in whichever thread the signal lands: a task's main thread may sit in a long
    C call (a sleep, a model run) and run Python handlers only when it returns, while the
    heartbeat must release the task within the grace."""

    def after_parent_died() -> None:
        worker.stop(grace_s=None if agent_alive() else 0.0)

    def report(signum: int) -> None:
        """An operator's signal: the agent leads the node's drain. A parent-death signal can
        look like one for a moment (`_parent_gone`): decided a little later."""
        if _parent_gone(parent):
            after_parent_died()
        else:
            events.emit("signal", signal=signal.Signals(signum).name, pid=os.getpid())

    def drain(signum: int) -> None:
        if _parent_gone(parent):  # the parent-death signal: no agent to ask
            after_parent_died()
            return
        first = not worker.stopping
        worker.stop()
        if first:  # one drain for the node, led by the agent
            timer = threading.Timer(PARENT_CHECK_S, report, args=(signum,))
            timer.daemon = True
            timer.start()

    def act(signum: int) -> None:
        if signum == HURRY_SIGNAL:
            worker.stop(grace_s=0.0)
        elif signum in DRAIN_SIGNALS:
            drain(signum)

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    for signum in (*DRAIN_SIGNALS, HURRY_SIGNAL):
        signal.signal(signum, _noted)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(
        target=_watch_signals, args=(read_fd, act), name="fleetinfer-signals", daemon=True
    ).start()


def _noted(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: nothing; `_watch_signals` acts on the signal."""


def _watch_signals(read_fd: int, act: Callable[[int], None]) -> None:
    while True:
        try:
            received = os.read(read_fd, 64)
        except OSError:
            return
        if not received:
            return
        for signum in received:
            act(signum)


if __name__ == "__main__":
    sys.exit(main())
