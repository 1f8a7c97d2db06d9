"""A model server in the test process (a thread), on the tiny models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fleetinfer.server.server import ModelServer, ServerConfig

FEATURES = 64 * 1024  # 256 KiB per sample: large enough for the direct-output path


def start_server(repo: Path, socket_path: Path, **options: Any) -> ModelServer:
    options.setdefault("model_control", True)  # the suites load and unload versions by hand
    config = ServerConfig(models=repo, socket_path=socket_path, intra_op_threads=1, **options)
    return ModelServer(config).start()


def instances_given_back(server: ModelServer, model: str) -> bool:
    """Whether every instance of `model` is free again within 5 s: an error reply goes out
    just before its instance is given back."""
    deadline = time.monotonic() + 5.0
    while server.registry.resolve(model)._busy and time.monotonic() < deadline:
        time.sleep(0.01)
    return server.registry.resolve(model)._busy == 0
