"""`fleetinfer serve --models REPO`: run the node's model server until SIGTERM / SIGINT.

SIGHUP re-reads the repository (new versions in, removed versions out, changed artifacts reloaded);
a version that fails to load is logged and the server keeps serving what it had. A configuration
error (a bad config.toml or manifest, a model ONNX Runtime refuses, a port in use, a socket folder
another user could write to) ends it with one line on stderr and exit code 3.
Once serving, one JSON line goes to stdout: {"event": "ready", "socket": ..., "metrics_port": ...}.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from fleetinfer.errors import FleetinferError
from fleetinfer.server.protocol import default_socket_path
from fleetinfer.server.server import REQUEST_SPIN_US, ModelServer, ServerConfig, start_server

EXIT_OK = 0
EXIT_CONFIG = 3  # fix the configuration (README: 0 ok, 1 bug, 2 usage, 3 config)


def serve(
    models: Path,
    socket_path: Path | None,
    metrics_port: int,
    *,
    intra_op_threads: int | None = None,
    instance_count: int | None = None,
    max_request_bytes: int = 1 << 30,
    max_region_bytes: int = 4 << 30,
    spin_us: float = REQUEST_SPIN_US,
    allowed_uids: frozenset[int] = frozenset(),
    model_control: bool = False,
) -> int:
    """Serve `models` on `socket_path` (default: `default_socket_path()`) until a signal."""
    config = ServerConfig(
        models=models,
        socket_path=socket_path or default_socket_path(),
        metrics_port=None if metrics_port < 0 else metrics_port,
        intra_op_threads=intra_op_threads,
        instance_count=instance_count,
        max_request_bytes=max_request_bytes,
        max_region_bytes=max_region_bytes,
        spin_us=spin_us,
        allowed_uids=allowed_uids,
        model_control=model_control,
    )
    try:
        server = start_server(config)
    except FleetinferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _install_signals(server)
    ready = {
        "event": "ready",
        "socket": str(config.socket_path),
        "metrics_port": server.metrics_port,
    }
    print(json.dumps(ready), flush=True)
    while not server.wait(1.0):
        pass
    return EXIT_OK


def _install_signals(server: ModelServer) -> None:
    def stop(signum: int, _frame: FrameType | None) -> None:
        server.stop()

    def reload(signum: int, _frame: FrameType | None) -> None:
        server.reload()  # logs and counts what failed; the server serves what it had

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)


def serve_command(
    models: Annotated[Path, typer.Option("--models", help="Model repository folder.")],
    socket: Annotated[
        Path | None, typer.Option("--socket", help="Unix socket path (default: per-user path).")
    ] = None,
    metrics_port: Annotated[
        int,
        typer.Option(
            "--metrics-port", help="HTTP port for /metrics and health; 0 = any, -1 = off."
        ),
    ] = 8002,
    intra_op_threads: Annotated[
        int | None, typer.Option("--intra-op-threads", help="ONNX Runtime threads per execution.")
    ] = None,
    instances: Annotated[
        int | None,
        typer.Option("--instances", help="Concurrent executions per model (default: config.toml)."),
    ] = None,
    max_request_mb: Annotated[
        int, typer.Option("--max-request-mb", help="Largest request (all inputs), in MiB.")
    ] = 1024,
    spin_us: Annotated[
        float,
        typer.Option(
            "--spin-us",
            help="Poll for a client's next request this long before blocking (µs); 0 = never.",
        ),
    ] = REQUEST_SPIN_US,
    allow_model_control: Annotated[
        bool,
        typer.Option(
            "--allow-model-control",
            help="Let the server's own user load and unload models over the socket.",
        ),
    ] = False,
    allow_uid: Annotated[
        list[int] | None,
        typer.Option("--allow-uid", help="Another uid that may connect (repeatable)."),
    ] = None,
) -> None:
    """Serve the repository's models to local workers (Unix socket + shared memory)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    code = serve(
        models,
        socket,
        metrics_port,
        intra_op_threads=intra_op_threads,
        instance_count=instances,
        max_request_bytes=max_request_mb << 20,
        spin_us=spin_us,
        allowed_uids=frozenset(allow_uid or ()),
        model_control=allow_model_control,
    )
    raise typer.Exit(code)


if __name__ == "__main__":
    typer.run(serve_command)
