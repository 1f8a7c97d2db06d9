"""Fixtures of the unit suites that talk to a model server in this process (a thread)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetinfer.client import SharedModelClient
from fleetinfer.server.server import ModelServer
from tests.helpers.servers import FEATURES, start_server
from tests.helpers.tiny_models import affine_repository, fragile_repository, identity_repository


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Unix socket paths are limited to 107 bytes: keep them short."""
    path = Path(tempfile.mkdtemp(prefix="fi-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def repo(short_dir: Path) -> Path:
    """affine (versions 1 and 2), identity (256 KiB per sample) and fragile."""
    root = affine_repository(short_dir / "repo", versions={1: 2.0, 2: 3.0})
    identity_repository(root, features=FEATURES)
    fragile_repository(root)
    return root


@pytest.fixture
def server(repo: Path, short_dir: Path) -> Iterator[ModelServer]:
    server = start_server(repo, short_dir / "s.sock", max_request_bytes=4 << 20)
    yield server
    server.stop()


@pytest.fixture
def client(server: ModelServer) -> Iterator[SharedModelClient]:
    client = SharedModelClient(server.config.socket_path, connect_timeout_s=2.0)
    yield client
    client.close()
