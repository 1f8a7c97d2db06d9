"""What the fault tests do to a node: find its processes, signal them, look for leftovers."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

from fleetinfer.node.signals import process_alive
from fleetinfer.server.shm import our_segments
from tests.apps.harness import NodeProcess, wait_for


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren …), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[-1].split()
        except OSError:
            continue
        if fields[0] not in (b"Z", b"X"):
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def node_pids(node: NodeProcess) -> list[int]:
    """The agent and every process it started (zygote, workers, model server)."""
    return [node.proc.pid, *descendants(node.proc.pid)]


def signal_node(node: NodeProcess, delivery: str) -> None:
    """`agent`: SIGTERM to the agent alone; `every-term` / `every-int`: SIGTERM / SIGINT to each
    process of the node at once (as `kill -TERM -PGID`, systemd's control-group kill, Ctrl-C)."""
    if delivery == "agent":
        os.kill(node.proc.pid, signal.SIGTERM)
        return
    signum = signal.SIGTERM if delivery == "every-term" else signal.SIGINT
    pids = node_pids(node)
    assert len(pids) >= 3, f"expected an agent and its workers, found {pids}"
    for pid in pids:
        os.kill(pid, signum)


def wait_all_gone(pids: list[int], timeout_s: float, what: str) -> None:
    wait_for(lambda: not any(process_alive(p) for p in pids), timeout_s, what)


def leftovers_of(pids: list[int]) -> list[str]:
    """Shared-memory segments and node folders named after one of `pids`."""
    names = set(our_segments())
    names.update(os.listdir(tempfile.gettempdir()))
    marks = [f"fleetinfer-{pid}-" for pid in pids] + [f"fleetinfer-node-{pid}-" for pid in pids]
    return sorted(n for n in names if any(n.startswith(m) for m in marks))


def tracebacks(log_path: Path) -> list[str]:
    text = log_path.read_text(errors="replace")
    return [
        line for line in text.splitlines() if "Traceback" in line or "KeyboardInterrupt" in line
    ]


def freeze(pid: int) -> None:
    """SIGSTOP `pid` and wait until it has stopped (the signal takes effect asynchronously)."""
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: _state(pid) in (b"T", b"t"), 10, f"process {pid} to stop")


def _state(pid: int) -> bytes:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return stat.read().rsplit(b")", 1)[-1].split()[0]
