"""What dead nodes left behind, removed when a node starts.

A node that is SIGKILLed (the OOM killer, a crashed supervisor), or whose workers die together
with its model server, leaves its private folder (`$TMPDIR/fleetinfer-node-<agent pid>-*`:
socket, server log) and its workers' shared-memory segments (`/dev/shm/fleetinfer-<pid>-*`).
Both names carry the pid of the process that made them. A node at start removes those that
belong to its own user and whose process is gone; never one of a live process (a pid that runs,
whoever runs it, keeps its files), never another user's.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fleetinfer.node.model_server import NODE_DIR_PREFIX
from fleetinfer.node.signals import process_alive
from fleetinfer.server.shm import SHM_DIR

log = logging.getLogger("fleetinfer.node")

_SEGMENT = re.compile(r"fleetinfer-([0-9]{1,10})-[0-9a-f]{16}")
_NODE_DIR = re.compile(re.escape(NODE_DIR_PREFIX) + r"([0-9]{1,10})-[A-Za-z0-9_]+")


@dataclass(frozen=True, slots=True)
class Leftovers:
    """What `remove_leftovers` removed."""

    segments: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)


def remove_leftovers(
    *, shm_dir: Path = SHM_DIR, temp_dir: Path | None = None, uid: int | None = None
) -> Leftovers:
    """Remove the segments and node folders of `uid` (default: ours) whose process is gone."""
    uid = os.getuid() if uid is None else uid
    temp = Path(tempfile.gettempdir()) if temp_dir is None else temp_dir
    removed = Leftovers()
    for path in _dead_entries(shm_dir, _SEGMENT, uid):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.segments.append(path.name)
    for path in _dead_entries(temp, _NODE_DIR, uid):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.folders.append(path.name)
    if removed.segments or removed.folders:
        log.warning(
            "removed what dead processes left: %d shared-memory segment(s), %d node folder(s)",
            len(removed.segments), len(removed.folders),
        )  # fmt: skip
    return removed


def _dead_entries(folder: Path, pattern: re.Pattern[str], uid: int) -> list[Path]:
    """Entries of `folder` named by `pattern` (its group 1 a pid), owned by `uid`, pid gone."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    dead = []
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        path = folder / name
        try:
            owner = path.lstat().st_uid
        except FileNotFoundError:
            continue
        if owner == uid and not process_alive(int(match.group(1))):
            dead.append(path)
    return dead
