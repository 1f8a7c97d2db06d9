"""Checks a node runs before it receives its first message, so a bad deploy stops at once.

    client     the mode is known; `triton` has a URL; `shared` has a model repository (the node
               starts its server) or a running server at $FLEETINFER_SOCKET
    target     the task's module imports and names an App or a task
    models     every model folder of the repository has a config.toml that parses and a
               servable version; in process each one loads in ONNX Runtime; a Triton server is
               ready and has each one ready
    queue      the broker answers (its depths are read)
    results    the store answers (a lookup)
    cloudwatch with node.cloudwatch_namespace: boto3 is installed and a region is known
               (`check_cloudwatch`, run first: it gives the agent its client)

A failure is a `ConfigError` (exit 3: fix the configuration) or a `TransientError` (exit 5:
a service is unavailable, retry later) whose message is one line naming the problem. No message
has been received then: the queue holds every task for a node that is configured right.
"""

from __future__ import annotations

import http.client
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetinfer.config import mask_url
from fleetinfer.errors import (
    ConfigError,
    FleetinferError,
    ModelConfigError,
    ServerUnavailableError,
)
from fleetinfer.node import shared_volumes
from fleetinfer.queue import open_broker
from fleetinfer.queue.base import Broker
from fleetinfer.results import open_store
from fleetinfer.server.repository import CONFIG_FILE, ModelRepository
from fleetinfer.task import resolve_target

if TYPE_CHECKING:
    from fleetinfer.node.agent import NodeConfig

log = logging.getLogger("fleetinfer.node")

PROBE_TIMEOUT_S = 5.0
LOAD_TIMEOUT_S = 300.0  # loading every model of a repository, in a child process
PROBE_TASK_ID = "fleetinfer-preflight-probe"


def check_node(config: NodeConfig) -> Broker:
    """Run every check; the broker they opened is returned for the agent's depth readings."""
    with one_line_errors(config):
        check_client(config)
        resolve_target(config.target)
        check_models(config)
        broker = open_broker(config.queue_url)
        try:
            broker.stats()
            check_results(config.results_url)
        except BaseException:
            broker.close()
            raise
    log.debug("preflight passed: target, models, queue and results store answer")
    return broker


@contextmanager
def one_line_errors(config: NodeConfig) -> Iterator[None]:
    """Our errors leave as one line, any password of the node's URLs shown as ***."""
    try:
        yield
    except FleetinferError as exc:
        text = str(exc)
        for url in (config.queue_url, config.results_url):
            text = text.replace(url, mask_url(url))
        text = " ".join(text.split())
        if text == str(exc):
            raise
        raise (type(exc)(text) if _plain(exc) else ConfigError(text)) from exc


def _plain(exc: BaseException) -> bool:
    """Whether `type(exc)(message)` builds an error of the same type (one message argument)."""
    try:
        type(exc)("probe")
    except TypeError:
        return False
    return True


# -- client --------------------------------------------------------------------------------


def check_client(config: NodeConfig) -> None:
    from fleetinfer.client import CLIENT_MODES

    mode = config.client_mode
    if mode not in CLIENT_MODES:
        raise ConfigError(
            f"unknown model client {mode!r}: expected one of {', '.join(CLIENT_MODES)}"
        )
    if mode == "triton" and not config.triton_url:
        raise ConfigError(
            "--client triton needs the server's address: give --triton-url HOST:PORT "
            "(node.triton_url, FLEETINFER_TRITON_URL)"
        )
    if mode == "shared":
        shared_volumes.check_shm_size(config.workers)
    if mode == "shared" and config.models is None:
        shared_volumes.check_socket_folder()
        _check_running_server()
        shared_volumes.check_shm_shared()


def _check_running_server() -> None:
    from fleetinfer.server.protocol import default_socket_path

    path = default_socket_path()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(PROBE_TIMEOUT_S)
            sock.connect(str(path))
    except OSError as exc:
        raise ConfigError(
            f"--client shared without --models needs a running model server, but none answers "
            f"at {path} ({exc.strerror or exc}): give --models REPO (the node starts its own "
            "server), or start `fleetinfer serve` and point FLEETINFER_SOCKET at its socket"
        ) from None


# -- models --------------------------------------------------------------------------------


def check_models(config: NodeConfig) -> None:
    """The repository is whole; in process every model loads, with Triton every one is ready."""
    names = [] if config.models is None else repository_models(config.models)
    if config.client_mode == "inprocess" and config.models is not None:
        _load_each(config.models, names)
    if config.client_mode == "triton" and config.triton_url:
        _check_triton(config.triton_url, names)


def repository_models(root: Path) -> list[str]:
    """The models of `root`, each config parsed and a version found; every problem at once."""
    if not root.is_dir():
        raise ConfigError(
            f"model repository {str(root)!r} is not a folder: expected "
            f"<repo>/<model>/{CONFIG_FILE} and <repo>/<model>/<version>/model.onnx"
        )
    repository = ModelRepository(root)
    folders = sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__pycache__"))
    )
    problems = [_model_problem(repository, folder) for folder in folders]
    found = [p for p in problems if p is not None]
    if found:
        raise ModelConfigError(f"model repository {root}: " + "; ".join(found))
    if not folders:
        raise ModelConfigError(
            f"model repository {root} holds no model: expected <repo>/<model>/{CONFIG_FILE} "
            "and <repo>/<model>/<version>/model.onnx"
        )
    return [folder.name for folder in folders]


def _model_problem(repository: ModelRepository, folder: Path) -> str | None:
    if not (folder / CONFIG_FILE).is_file():
        return f"{folder.name}/ has no {CONFIG_FILE} (write one, or move the folder out)"
    try:
        repository.resolve(folder.name)
    except FleetinferError as exc:
        return str(exc)
    return None


def _load_each(root: Path, names: list[str]) -> None:
    """Each model loads in ONNX Runtime, in a child process: the agent holds no session (its
    memory would count against the node) and never imports onnxruntime."""
    command = [sys.executable, "-m", "fleetinfer.node.preflight", str(root), *names]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=LOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ModelConfigError(
            f"the models of {root} did not load within {LOAD_TIMEOUT_S:g} s"
        ) from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        why = lines[-1] if lines else f"the loader exited with {done.returncode}"
        raise ModelConfigError(why)


def load_models(root: Path, names: list[str]) -> None:
    """Load each model's newest served version once (what a worker would load)."""
    from fleetinfer.server.session import OrtModel

    repository = ModelRepository(root)
    for name in names:
        try:
            OrtModel(repository.resolve(name), intra_op_threads=1)
        except Exception as exc:  # ONNX Runtime's own errors too
            raise ModelConfigError(
                f"model {name!r} of {root} does not load: {type(exc).__name__}: {exc}"
            ) from exc


def _check_triton(url: str, names: list[str]) -> None:
    status = _triton_status(url, "/v2/health/ready")
    if status != 200:
        raise ServerUnavailableError(f"Triton at {url} is not ready (HTTP {status}): retry later")
    missing = [name for name in names if _triton_status(url, f"/v2/models/{name}/ready") != 200]
    if missing:
        raise ConfigError(
            f"Triton at {url} has no ready model {', '.join(missing)}: load them there, or "
            "remove them from --models"
        )


def _triton_status(url: str, path: str) -> int:
    address = url.removeprefix("http://").rstrip("/")
    connection = http.client.HTTPConnection(address, timeout=PROBE_TIMEOUT_S)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        raise ServerUnavailableError(
            f"Triton at {url} does not answer ({exc}): check --triton-url and that the "
            "server runs, then retry"
        ) from exc
    except ValueError as exc:
        raise ConfigError(f"--triton-url {url!r} is not HOST:PORT ({exc})") from exc
    finally:
        connection.close()


# -- cloudwatch ----------------------------------------------------------------------------


def check_cloudwatch(config: NodeConfig) -> Any:
    """The CloudWatch client the node publishes its queue depths with; None when it does not
    publish. Without boto3 a `MissingExtraError`, without a region a `ConfigError`: the node
    stops before it opens its queue (credentials are looked up on the first publish)."""
    if config.cloudwatch is None:
        return None
    from fleetinfer.node.cloudwatch import open_cloudwatch

    with one_line_errors(config):
        return open_cloudwatch(config.cloudwatch)


# -- results -------------------------------------------------------------------------------


def check_results(url: str) -> None:
    """The store answers a lookup (a `TransientError` when it cannot be reached)."""
    store = open_store(url)
    try:
        store.get(PROBE_TASK_ID)
    finally:
        store.close()


def main(argv: list[str]) -> int:
    """`python -m fleetinfer.node.preflight REPO MODEL...`: exit 3 with one line on stderr if a
    model does not load."""
    root, *names = argv
    try:
        load_models(Path(root), names)
    except ModelConfigError as exc:
        print(" ".join(str(exc).split()), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
