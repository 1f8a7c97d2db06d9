"""Workers forked from one preloaded template process, so that they share what it imported.

    python -m fleetinfer.node.zygote --config-fd FD --control-fd FD [--verbose]

A fresh worker interpreter costs about 20 MiB of PSS (Python, numpy, the model client) before it
runs a task, and eight of them cost eight times that. The zygote imports the worker runtime, the
model client, numpy and the task's module once, moves those objects out of the garbage
collector's reach (`gc.freeze`, so that collections do not write to their pages), and forks one
worker per request: the workers share those pages copy-on-write. Each worker then runs exactly
what `python -m fleetinfer.node.process` runs.

The supervisor and the zygote talk over a SOCK_SEQPACKET socket pair, one message per datagram:

    supervisor -> zygote   b"spawn", with the write end of the worker's event pipe (SCM_RIGHTS)
    zygote -> supervisor   {"pid": N}                 the worker forked for that request
    zygote -> supervisor   {"exited": N, "code": C}   a worker ended (C as Popen: -signal if killed)
    zygote -> supervisor   {"refused": why}           it will not fork: the answer to every spawn
    zygote -> supervisor   {"signal": name}           it got SIGTERM / SIGINT: drain the node

The zygote forks from its only Python thread. If importing the task's module started other
Python threads (a client pool, a background poller), a fork would copy none of them and leave
whatever locks they held locked in every worker; the zygote then refuses, and the supervisor
starts the node's workers as fresh interpreters, with a warning that says why. The zygote exits
when the supervisor closes its end, and dies with the agent. A SIGTERM or SIGINT does not end it:
it asks the agent to drain the node (`signals.py`). Its workers get the parent-death signal when
it dies: with the agent alive they finish or release their tasks as in a drain, and the agent
follows them by pid until they end (it does not kill them).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import gc
import json
import logging
import os
import queue
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from types import FrameType
from typing import NoReturn

from fleetinfer.errors import TransientError
from fleetinfer.node.configpipe import config_pipe
from fleetinfer.node.signals import (
    DRAIN_SIGNALS,
    die_with_parent,
    drain_signals_blocked,
    process_alive,
    unblock_drain_signals,
)

log = logging.getLogger("fleetinfer.node")

SPAWN = b"spawn"
SPAWN_TIMEOUT_S = 30.0
ORPHAN_POLL_S = 0.05


# -- the zygote process ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parent = os.getppid()
    args = _parse(argv)
    control = socket.socket(fileno=args.control_fd)
    _install_signals(control, parent)
    die_with_parent(parent)
    unblock_drain_signals()
    _preload(args.config)
    threads = _threads_started_by_imports()
    if threads:
        _refuse(control, _refusal(threads))
        return 0
    gc.freeze()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the selector
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is control:
                events_fd = _receive_spawn(control)
                if events_fd is None:
                    return 0  # the supervisor closed its end: no more workers to make
                with drain_signals_blocked():  # the worker unblocks them once it handles them
                    pid = os.fork()
                    if pid == 0:
                        _run_worker(args, events_fd, (control.fileno(), wake_r, wake_w))
                os.close(events_fd)
                control.send(json.dumps({"pid": pid}).encode())
            else:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
        _reap(control)


def _install_signals(control: socket.socket, parent: int) -> None:
    """SIGTERM / SIGINT: ask the agent to drain the node, go on forking until it closes our
    end. The parent-death signal (the agent died): end now, so that the workers follow."""

    def drain(signum: int, frame: FrameType | None) -> None:
        if os.getppid() != parent or not process_alive(parent):  # see process._parent_gone
            os._exit(0)
        with contextlib.suppress(OSError):
            control.send(json.dumps({"signal": signal.Signals(signum).name}).encode())

    for signum in DRAIN_SIGNALS:
        signal.signal(signum, drain)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fleetinfer.node.zygote")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="WorkerConfig as JSON (visible in ps: no secrets)")
    source.add_argument("--config-fd", type=int, help="pipe holding the WorkerConfig JSON")
    parser.add_argument("--control-fd", type=int, required=True, help="SOCK_SEQPACKET socket")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.config_fd is not None:  # forked workers get the text in memory, not on an argv
        from fleetinfer.node.configpipe import read_config

        args.config = read_config(args.config_fd)
    return args


def _preload(config_json: str) -> None:
    """Import what every worker imports. The task's module too; if it fails to import, each
    worker meets the same error and reports it, as a freshly started worker would."""
    import numpy  # noqa: F401

    import fleetinfer.client
    import fleetinfer.node.worker  # noqa: F401
    from fleetinfer.node.worker import WorkerConfig
    from fleetinfer.task import resolve_target

    config = WorkerConfig.decode(config_json)
    if config.client_mode == "inprocess":
        import onnxruntime  # noqa: F401
    try:
        resolve_target(config.target)
    except Exception as exc:  # reported by each worker, with the exit code that stops the node
        log.debug("zygote: the task's module did not import: %s", exc)


def _threads_started_by_imports() -> list[str]:
    """Python threads running besides this one: a fork copies only the forking thread, so locks
    those threads hold would stay locked in every worker. (Native pools that guard themselves
    against fork, as OpenBLAS's, are not Python threads and do not count.)"""
    main = threading.main_thread()
    return sorted(t.name for t in threading.enumerate() if t is not main)


def _refuse(control: socket.socket, why: str) -> None:
    """Answer every spawn request with `why` until the supervisor closes its end."""
    while (events_fd := _receive_spawn(control)) is not None:
        os.close(events_fd)
        control.send(json.dumps({"refused": why}).encode())


def _refusal(threads: list[str]) -> str:
    return (
        f"importing the task's module started {len(threads)} thread(s) "
        f"({', '.join(threads)[:200]}), which a forked worker would inherit half-alive: workers "
        "start as fresh interpreters instead (start those threads on first use, or pass "
        "--no-preload to say so)"
    )


def _receive_spawn(control: socket.socket) -> int | None:
    """The event fd of a spawn request, or None when the supervisor has gone."""
    try:
        message, ancillary, _flags, _addr = control.recvmsg(64, socket.CMSG_SPACE(4))
    except ConnectionError:
        return None
    if message != SPAWN:
        return None
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return fds[0] if fds else None


def _run_worker(args: argparse.Namespace, events_fd: int, inherited: Sequence[int]) -> NoReturn:
    """In the forked child: become a worker, exactly as `python -m fleetinfer.node.process`."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in inherited:
            os.close(fd)
        from fleetinfer.node import process

        argv = ["--config", args.config, "--events-fd", str(events_fd)]
        code = process.main([*argv, "--verbose"] if args.verbose else argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):
            control.send(json.dumps({"exited": pid, "code": code}).encode())


# -- the supervisor's end --------------------------------------------------------------------


class ForkedWorker:
    """A worker forked by the zygote, with the part of `subprocess.Popen` the supervisor uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._done = threading.Event()

    def exited(self, code: int) -> None:
        self.returncode = code
        self._done.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.send_signal(signal.SIGKILL)


class PreloadRefusedError(Exception):
    """The zygote will not fork workers (its imports started threads): start fresh ones."""


class Zygote:
    """Starts the zygote process, asks it for workers and learns how they end."""

    def __init__(
        self,
        config_json: str,
        env: dict[str, str],
        stdout: int | None,
        *,
        verbose: bool,
        on_signal: Callable[[str], None] | None = None,
    ) -> None:
        self._command = [sys.executable, "-m", "fleetinfer.node.zygote"]
        self._command += ["--verbose"] if verbose else []
        self._config_json = config_json  # through a pipe: a URL's password stays out of ps
        self._env, self._stdout = env, stdout
        self._lock = threading.Lock()  # one spawn at a time: its reply is the next pid message
        self._state = threading.Lock()
        self._children: dict[int, ForkedWorker] = {}
        self._early: dict[int, int] = {}  # exits reported before the spawn call registered them
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._pids: queue.Queue[int | None] = queue.Queue()
        self.refused: str | None = None  # why the zygote will not fork workers, once it said so
        self._on_signal = on_signal

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def spawn(self, events_fd: int) -> ForkedWorker:
        """A new worker writing its events to `events_fd` (the caller closes its copy)."""
        with self._lock:
            if self.refused is not None:
                raise PreloadRefusedError(self.refused)
            if self._process is None or self._process.poll() is not None:
                self._start()
            assert self._sock is not None
            fds = array.array("i", [events_fd])
            try:
                self._sock.sendmsg([SPAWN], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                pid = self._pids.get(timeout=SPAWN_TIMEOUT_S)
            except (OSError, queue.Empty) as exc:
                raise TransientError(f"the worker zygote did not fork a worker: {exc}") from exc
            if pid is None:
                if self.refused is not None:
                    raise PreloadRefusedError(self.refused)
                raise TransientError("the worker zygote exited; it restarts on the next spawn")
            worker = ForkedWorker(pid)
            with self._state:
                self._children[pid] = worker
                early = self._early.pop(pid, None)
            if early is not None:
                worker.exited(early)
            return worker

    def close(self) -> None:
        """Close our end (the zygote exits) and wait for it."""
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):  # wakes our reader; the zygote reads EOF
                    self._sock.shutdown(socket.SHUT_RDWR)
                self._sock.close()
            if self._process is not None:
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        config_fd = config_pipe(self._config_json)
        try:
            command = [*self._command, "--control-fd", str(theirs.fileno())]
            command += ["--config-fd", str(config_fd)]
            with drain_signals_blocked():
                self._process = subprocess.Popen(
                    command,
                    pass_fds=(theirs.fileno(), config_fd),
                    stdout=self._stdout,
                    env=self._env,
                )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            os.close(config_fd)
        self._sock, self._pids = ours, queue.Queue()
        threading.Thread(
            target=self._read, args=(ours, self._pids), name="fleetinfer-zygote", daemon=True
        ).start()

    def _read(self, sock: socket.socket, pids: queue.Queue[int | None]) -> None:
        while True:
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                break
            message = json.loads(data)
            if "pid" in message:
                pids.put(int(message["pid"]))
            elif "refused" in message:
                self.refused = str(message["refused"])
                pids.put(None)  # the answer to the spawn request
            elif "signal" in message:
                if self._on_signal is not None:
                    self._on_signal(f"{message['signal']} to the worker zygote")
            else:
                self._exited(int(message["exited"]), int(message["code"]))
        pids.put(None)
        self._orphaned()

    def _exited(self, pid: int, code: int) -> None:
        with self._state:
            worker = self._children.pop(pid, None)
            if worker is None:
                self._early[pid] = code
        if worker is not None:
            worker.exited(code)

    def _orphaned(self) -> None:
        """The zygote is gone: its workers got the parent-death signal and finish or release
        their tasks (`process.py`). No exit code can reach us any more: follow them by pid until
        they end, reported as 0 (they drain and exit 0), so that the supervisor moves on."""
        with self._state:
            orphans = list(self._children.values())
            self._children.clear()
        if orphans:
            threading.Thread(
                target=_follow_orphans, args=(orphans,), name="fleetinfer-orphans", daemon=True
            ).start()


def _follow_orphans(orphans: list[ForkedWorker]) -> None:
    """Report each orphan exited once its process has ended (pidfd where there is one)."""
    waiting = {worker: _pidfd(worker.pid) for worker in orphans}
    while waiting:
        for worker, fd in list(waiting.items()):
            if not _ended(worker.pid, fd):
                continue
            if fd is not None:
                os.close(fd)
            del waiting[worker]
            worker.exited(0)
        time.sleep(ORPHAN_POLL_S)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):  # ended already, or an older kernel
        return None


def _ended(pid: int, fd: int | None) -> bool:
    if fd is not None:
        readable, _, _ = select.select([fd], [], [], 0)
        return bool(readable)
    return not process_alive(pid)


if __name__ == "__main__":
    sys.exit(main())
