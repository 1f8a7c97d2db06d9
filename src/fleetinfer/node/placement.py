"""Placement on one node: which queues its workers read, and one model server per device.

    open_node_queues(url, attributes)   the base queue plus the capability classes satisfied
    device_plans(kind, count)           per device: the environment and CPUs of its model server
    pick_device_socket()                in a worker: the server it talks to, spread round robin

Devices (`devices = N`, `device_kind = ...` in the node configuration):

    cpu      server i is pinned to a slice of the node's cores (os.sched_setaffinity)
    cuda     server i sees only GPU i:          CUDA_VISIBLE_DEVICES=i
    neuron   server i sees only NeuronCore i:   NEURON_RT_VISIBLE_CORES=i

This is ECS's "one inference task per chip". The agent exports the servers' sockets to its
workers as FLEETINFER_DEVICE_SOCKETS; each worker takes the next one from a counter file under
the node's private folder, so N workers over D servers are spread N/D each (a restarted worker
takes the next free turn).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from fleetinfer.errors import ConfigError
from fleetinfer.queue import open_broker
from fleetinfer.queue.base import Broker

if TYPE_CHECKING:
    from fleetinfer.node.model_server import ModelServerProcess, ServerOptions

DEVICE_SOCKETS_ENV = "FLEETINFER_DEVICE_SOCKETS"
DEVICE_COUNTER_ENV = "FLEETINFER_DEVICE_COUNTER"
DEVICE_KINDS = ("cpu", "cuda", "neuron")
_VISIBILITY_ENV = {"cuda": "CUDA_VISIBLE_DEVICES", "neuron": "NEURON_RT_VISIBLE_CORES"}


def open_node_queues(url: str, attributes: Mapping[str, str] | None) -> Broker:
    """The queue a worker reads: `url` alone without attributes, else `url` plus the capability
    classes those attributes satisfy (`fleetinfer.queue.placed.PlacedBroker`)."""
    base = open_broker(url)
    if attributes is None:
        return base
    from fleetinfer.queue.placed import PlacedBroker

    return PlacedBroker(base, attributes)


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """One model server's share of the node: its device, environment and CPUs (None: all)."""

    index: int
    env: dict[str, str] = field(default_factory=dict)
    cpus: frozenset[int] | None = None


def device_plans(kind: str, count: int, *, cpus: frozenset[int] | None = None) -> list[DevicePlan]:
    """One plan per device. CPU devices split `cpus` (default: this process's) into `count`
    disjoint slices; accelerators get their visibility variable and share the CPUs."""
    if kind not in DEVICE_KINDS:
        raise ConfigError(f"device_kind must be one of {', '.join(DEVICE_KINDS)}, got {kind!r}")
    if count < 1:
        raise ConfigError(f"devices must be at least 1, got {count!r}")
    if kind != "cpu":
        variable = _VISIBILITY_ENV[kind]
        return [DevicePlan(i, {variable: str(i)}) for i in range(count)]
    available = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    if len(available) < count:
        raise ConfigError(
            f"{count} CPU devices need at least {count} cores, this node has {len(available)}: "
            "lower `devices`"
        )
    return [DevicePlan(i, {}, frozenset(available[i::count])) for i in range(count)]


def start_device_servers(
    options: ServerOptions,
    plans: list[DevicePlan],
    start: Callable[[ServerOptions], ModelServerProcess],
) -> tuple[list[ModelServerProcess], dict[str, str]]:
    """Start one model server per plan with `start` (the agent's way of starting its server,
    given `options` narrowed to the device); returns them and the workers' environment. A
    server that cannot start stops the ones already started, and its error propagates."""
    servers: list[ModelServerProcess] = []
    try:
        for plan in plans:
            threads = options.intra_op_threads or _threads(plan)
            narrowed = replace(options, env=plan.env, cpus=plan.cpus, intra_op_threads=threads)
            servers.append(start(narrowed))
    except BaseException:
        for server in servers:
            server.cleanup()
        raise
    sockets = [s.socket_path for s in servers]
    return servers, device_environment(sockets, servers[0].socket_path.parent)


def _threads(plan: DevicePlan) -> int | None:
    return None if plan.cpus is None else len(plan.cpus)


def device_environment(sockets: list[Path], folder: Path) -> dict[str, str]:
    """What the agent adds to its workers' environment for several model servers."""
    counter = folder / "device-counter"
    counter.touch(mode=0o600)
    return {
        DEVICE_SOCKETS_ENV: os.pathsep.join(map(str, sockets)),
        DEVICE_COUNTER_ENV: str(counter),
    }


def pick_device_socket(environ: Mapping[str, str] | None = None) -> Path | None:
    """In a worker: the model server socket to use (None when the node runs one server)."""
    env = os.environ if environ is None else environ
    listed = env.get(DEVICE_SOCKETS_ENV)
    if not listed:
        return None
    sockets = listed.split(os.pathsep)
    turn = _next_turn(Path(env[DEVICE_COUNTER_ENV])) if DEVICE_COUNTER_ENV in env else os.getpid()
    return Path(sockets[turn % len(sockets)])


def _next_turn(counter: Path) -> int:
    """Read and increment the integer in `counter` under an exclusive lock."""
    with counter.open("r+") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        text = file.read().strip()
        turn = int(text) if text.isdigit() else 0
        file.seek(0)
        file.write(str(turn + 1))
        file.truncate()
        return turn
