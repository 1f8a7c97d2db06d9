"""The start-up checks of a node that uses a model server in another container: the socket
volume, the size of /dev/shm and whether the server sees this node's shared memory. The
container case itself (volumes missing for real) is in tests/e2e/test_container.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetinfer.errors import ConfigError
from fleetinfer.node import shared_volumes
from fleetinfer.server.server import ModelServer
from fleetinfer.server.shm import our_segments


def test_a_named_socket_whose_folder_is_missing_is_refused_with_the_folder_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETINFER_SOCKET", str(tmp_path / "gone" / "models.sock"))
    with pytest.raises(
        ConfigError,
        match=f"needs a running model server.* its folder {tmp_path}/gone does not exist",
    ):
        shared_volumes.check_socket_folder()


def test_in_a_container_a_socket_folder_that_is_no_mount_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETINFER_SOCKET", str(tmp_path / "models.sock"))
    monkeypatch.setattr(shared_volumes, "in_container", lambda: True)
    with pytest.raises(
        ConfigError, match=f"needs a running model server.* {tmp_path} is not a mounted volume"
    ):
        shared_volumes.check_socket_folder()


def test_outside_a_container_an_existing_socket_folder_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETINFER_SOCKET", str(tmp_path / "models.sock"))
    monkeypatch.setattr(shared_volumes, "in_container", lambda: False)
    shared_volumes.check_socket_folder()  # the preflight's connect reports a missing server


def test_a_socket_that_is_there_passes_even_in_a_container(
    server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETINFER_SOCKET", str(server.config.socket_path))
    monkeypatch.setattr(shared_volumes, "in_container", lambda: True)
    shared_volumes.check_socket_folder()


def test_a_shm_smaller_than_a_region_per_worker_is_refused_with_both_sizes(tmp_path: Path) -> None:
    workers = 1 << 40  # more regions of 16 MiB than any file system holds
    with pytest.raises(ConfigError, match=r"MiB, but --client shared with \d+ worker\(s\) needs"):
        shared_volumes.check_shm_size(workers, tmp_path)
    shared_volumes.check_shm_size(1, tmp_path)


def test_a_missing_shm_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        shared_volumes.check_shm_size(1, tmp_path / "no-shm")


def test_a_server_sharing_shm_with_the_node_passes_and_no_probe_region_is_left(
    server: ModelServer,
) -> None:
    before = our_segments()
    shared_volumes.check_shm_shared(server.config.socket_path)
    assert our_segments() == before
