"""The volumes a node shares with a model server in another container, checked at start.

With `--client shared` and no `--models`, the node's workers talk to a `fleetinfer serve` that
runs elsewhere (another container of the pod or task): through its Unix socket, whose folder must
be a volume both mount, and through regions in /dev/shm, which must be the same memory (a shared
IPC namespace: `docker run --ipc=container:SERVER`, or a memory-backed volume at /dev/shm in
both). A node started without them would fail on its first task; these checks make it say so at
start instead, as one `ConfigError` line (exit 3):

    socket volume   with no socket at $FLEETINFER_SOCKET yet, its folder exists and, in a
                    container, is a mount point (a volume shared with the server's container)
    /dev/shm size   /dev/shm exists and holds one client region per worker
    /dev/shm shared the server can open a region this node creates (a real attach, then closed)
"""

from __future__ import annotations

import os
from pathlib import Path

from fleetinfer.errors import ConfigError, FleetinferError, MalformedMessageError
from fleetinfer.node.model_server import SOCKET_ENV
from fleetinfer.server.protocol import default_socket_path
from fleetinfer.server.shm import SHM_DIR

REGION_BYTES = 16 << 20  # a client's first region (fleetinfer.client.SharedClient)
PROBE_REGION_BYTES = 1 << 16
_MIB = 1 << 20
_NO_SERVER = "--client shared without --models needs a running model server, but none answers"
_CONTAINER_HINT = (
    "in containers, mount one volume at the socket folder in both the server's and the node's "
    "container, and share /dev/shm (docker: the server with --ipc=shareable, the node with "
    "--ipc=container:SERVER; Kubernetes: one emptyDir of medium Memory at /dev/shm in both; "
    "ECS: ipcMode task)"
)


def check_socket_folder() -> None:
    """With $FLEETINFER_SOCKET set and no socket there yet: its folder exists and, in a
    container, is a mount point (the volume shared with the server's container)."""
    explicit = os.environ.get(SOCKET_ENV)
    if not explicit or Path(explicit).exists():
        return  # no socket named, or one is there: the preflight's connect says the rest
    path = Path(explicit)
    if not path.parent.is_dir():
        raise ConfigError(
            f"{_NO_SERVER} at {path}: its folder {path.parent} does not exist, the socket volume "
            f"is not mounted; {_CONTAINER_HINT}; or give --models REPO (the node starts its own "
            "server)"
        )
    if in_container() and not os.path.ismount(path.parent):
        raise ConfigError(
            f"{_NO_SERVER} at {path}, and {path.parent} is not a mounted volume: "
            f"{_CONTAINER_HINT}; or give --models REPO (the node starts its own server)"
        )


def in_container() -> bool:
    """Whether this process runs in a container (Docker's or Podman's marker file, or a
    container runtime named in PID 1's environment as systemd-nspawn and Kubernetes set it)."""
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        return True
    runtime = os.environ.get("container")  # noqa: SIM112 - systemd names it in lower case
    return bool(runtime or os.environ.get("KUBERNETES_SERVICE_HOST"))


def check_shm_size(workers: int | None, shm_dir: Path = SHM_DIR) -> None:
    """/dev/shm exists and holds a first region for each worker (Docker's default is 64 MiB)."""
    needed_bytes = REGION_BYTES * max(workers or 1, 1)
    try:
        st = os.statvfs(shm_dir)
    except OSError as exc:
        raise ConfigError(
            f"--client shared needs {shm_dir} for the tensors it passes to the model server, "
            f"but it cannot be read ({exc.strerror}): {_CONTAINER_HINT}"
        ) from None
    size_bytes = st.f_blocks * st.f_frsize
    if size_bytes < needed_bytes:
        raise ConfigError(
            f"{shm_dir} holds {size_bytes // _MIB} MiB, but --client shared with "
            f"{workers or 1} worker(s) needs at least {needed_bytes // _MIB} MiB "
            f"({REGION_BYTES // _MIB} MiB a worker): give the container more shared memory "
            "(docker run --shm-size, a larger memory-backed /dev/shm volume) or fewer --workers"
        )


def check_shm_shared(socket_path: Path | None = None) -> None:
    """The server can open a region this node creates: /dev/shm is the same memory for both.
    Call it once a server answers on the socket."""
    from fleetinfer.server.channel import Channel

    path = socket_path or default_socket_path()
    try:
        channel = Channel.connect(
            path, region_bytes=PROBE_REGION_BYTES, max_region_bytes=PROBE_REGION_BYTES
        )
    except ConfigError:
        raise  # the server's user is not ours: its own message says so
    except MalformedMessageError as exc:  # the server found no region of that name
        raise ConfigError(
            f"the model server at {path} answers but cannot open this node's shared memory "
            f"({_one_line(exc)}): /dev/shm is not shared between them; {_CONTAINER_HINT}"
        ) from None
    except (FleetinferError, OSError) as exc:
        raise ConfigError(
            f"cannot attach shared memory to the model server at {path}: {_one_line(exc)}"
        ) from None
    channel.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
