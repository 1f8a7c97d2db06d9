"""A model server in the test process (a thread), on the tiny models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleetinfer.server.server import ModelServer, ServerConfig

FEATURES = 64 * 1024  # 256 KiB per sample: large enough for the direct-output path


def start_server(repo: Path, socket_path: Path, **options: Any) -> ModelServer:
    config = ServerConfig(models=repo, socket_path=socket_path, intra_op_threads=1, **options)
    return ModelServer(config).start()
