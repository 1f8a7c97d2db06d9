"""Who may sit at either end of the model server's socket.

The socket's folder is the server's: created mode 0700, or, when it exists, a real directory (not a
symlink) owned by the server's user that nobody else may write to; anything else is refused with a
`ConfigError` before the server listens, because whoever can write to the folder can move the socket
aside and listen in its place. Both ends then check the other with `SO_PEERCRED`: the server
accepts its own user (and the uids its configuration allows), the client accepts a server running
as its own user or as root, and refuses anything else with a typed error instead of reading
another user's replies.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
from pathlib import Path

from fleetinfer.errors import ConfigError

_PEERCRED = struct.Struct("3i")


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    _pid, uid, _gid = _PEERCRED.unpack(creds)
    return int(uid)


def private_socket_folder(folder: Path) -> None:
    """Create `folder` mode 0700 if missing (its parents too); refuse one that another user
    could write to, a symlink, or one owned by someone else (`ConfigError`)."""
    try:
        with contextlib.suppress(FileExistsError):  # a file there: refused below
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(folder)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the socket folder {folder}: {exc.strerror}; choose another --socket"
        ) from exc
    problem = _folder_problem(st)
    if problem:
        raise ConfigError(
            f"socket folder {folder} {problem}: another user could move the socket aside and "
            f"listen in its place; remove the folder (or choose another --socket) so that the "
            f"server creates it mode 0700"
        )


def _folder_problem(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != os.getuid():
        return f"belongs to uid {st.st_uid}, not to this server's uid {os.getuid()}"
    if st.st_mode & 0o022:
        return f"has mode {oct(st.st_mode & 0o7777)}: group or others may write to it"
    return ""


def check_server_peer(sock: socket.socket, socket_path: Path) -> None:
    """Client side: refuse a server that runs as neither this user nor root (`ConfigError`)."""
    uid = peer_uid(sock)
    if uid not in (os.getuid(), 0):
        raise ConfigError(
            f"the model server listening on {socket_path} runs as uid {uid}, expected uid "
            f"{os.getuid()} (this user) or 0: another user may have taken the socket's place; "
            "check the socket folder's owner and restart the server"
        )
