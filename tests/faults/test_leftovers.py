"""A node at start removes the segments and folders of dead processes of its user, no others."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fleetinfer.node.leftovers import remove_leftovers


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_what_dead_processes_left_is_removed(tmp_path: Path) -> None:
    shm, temp = tmp_path / "shm", tmp_path / "tmp"
    shm.mkdir()
    temp.mkdir()
    dead, live = _dead_pid(), os.getpid()
    (shm / f"fleetinfer-{dead}-0123456789abcdef").write_bytes(b"x")
    (shm / f"fleetinfer-{live}-0123456789abcdef").write_bytes(b"x")
    (shm / "fleetinfer-notapid-0123456789abcdef").write_bytes(b"x")
    (temp / f"fleetinfer-node-{dead}-abc_123").mkdir()
    (temp / f"fleetinfer-node-{dead}-abc_123" / "server.log").write_text("log")
    (temp / f"fleetinfer-node-{live}-xyz").mkdir()
    (temp / "fleetinfer-node-oldstyle").mkdir()

    removed = remove_leftovers(shm_dir=shm, temp_dir=temp)

    assert removed.segments == [f"fleetinfer-{dead}-0123456789abcdef"]
    assert removed.folders == [f"fleetinfer-node-{dead}-abc_123"]
    assert sorted(p.name for p in shm.iterdir()) == [
        f"fleetinfer-{live}-0123456789abcdef",
        "fleetinfer-notapid-0123456789abcdef",
    ]
    assert sorted(p.name for p in temp.iterdir()) == [
        f"fleetinfer-node-{live}-xyz",
        "fleetinfer-node-oldstyle",
    ]


def test_another_users_leftovers_are_kept(tmp_path: Path) -> None:
    dead = _dead_pid()
    (tmp_path / f"fleetinfer-{dead}-0123456789abcdef").write_bytes(b"x")
    removed = remove_leftovers(shm_dir=tmp_path, temp_dir=tmp_path, uid=os.getuid() + 1)
    assert removed.segments == []
    assert (tmp_path / f"fleetinfer-{dead}-0123456789abcdef").exists()
