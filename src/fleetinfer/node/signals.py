"""How the processes of one node take signals, so that any delivery starts one drain.

A signal may reach the agent alone (`kill PID`), or every process of the node at once: Ctrl-C
in a terminal and `kill -TERM -PGID` signal the process group, systemd signals the whole control
group, and container init processes forward to the group. Whoever gets it first, the node drains
once, led by the agent:

    agent         SIGTERM / SIGINT: the first starts the drain, a second cuts the grace short
    worker        SIGTERM / SIGINT: stops receiving, finishes (or, at the grace, releases) its
                  task, and tells the agent on its event pipe ("signal"); the agent's own SIGTERM
                  in the drain changes nothing more. SIGUSR1 (`HURRY_SIGNAL`, from the agent
                  only): release the task now
    zygote        SIGTERM / SIGINT: tells the agent on its control socket; goes on until closed
    model server  SIGTERM / SIGINT: tells the agent on its stdout; serves until the agent
                  closes its stdin, after the workers

Every child starts with SIGTERM and SIGINT blocked (`drain_signals_blocked` around the spawn)
and unblocks them once its handlers are in place: a signal that comes while a child imports
is held, not lost and not a KeyboardInterrupt traceback. Every child also dies with its parent
(`die_with_parent`, Linux's parent-death signal): a worker whose parent died while the agent
lives (the zygote was killed) finishes or releases its task as in a drain; one whose agent died
releases it at once, so that nothing of a SIGKILLed agent's node outlives it by more than a
moment.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Iterator

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HURRY_SIGNAL = signal.SIGUSR1
AGENT_PID_ENV = "FLEETINFER_AGENT_PID"
PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def drain_signals_blocked() -> Iterator[None]:
    """Processes started inside start with SIGTERM and SIGINT blocked (the mask is inherited
    through fork and exec); they unblock them with `unblock_drain_signals`."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, DRAIN_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def unblock_drain_signals() -> None:
    """Deliver what came while blocked, to the handlers now installed."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, DRAIN_SIGNALS)


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """Linux: get `signum` when the parent dies; at once if it died already."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum)
    except (OSError, AttributeError):  # not Linux: the watchdogs of each process remain
        return
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signum)


def agent_pid() -> int | None:
    """The node agent's pid, as the agent exported it to its children."""
    with contextlib.suppress(ValueError):
        pid = int(os.environ.get(AGENT_PID_ENV, ""))
        return pid if pid > 0 else None
    return None


def agent_alive() -> bool:
    """False once the node's agent has ended (a zombie counts as ended); True if unknown."""
    pid = agent_pid()
    return True if pid is None else process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not); a process of another user counts as running."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[-1].split()[0]
        return state not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
