"""A child process's configuration through an inherited pipe, never on its command line.

Every local user can read any process's command line (`ps -eo args`, `/proc/PID/cmdline`), so a
password in a queue or results URL must not travel there. The parent writes the configuration's
JSON into a pipe, closes the write end and passes the read end to the child (`pass_fds`), which
names only the descriptor on its command line (`--config-fd N`) and reads the JSON to EOF.
"""

from __future__ import annotations

import os

from fleetinfer.errors import ConfigError

PIPE_CAPACITY_BYTES = 65536  # Linux's default pipe buffer: written whole before the child runs


def config_pipe(text: str) -> int:
    """A pipe's read end holding `text` (its write end closed); the caller passes it to one
    child and closes it afterwards."""
    data = text.encode("utf-8")
    if len(data) >= PIPE_CAPACITY_BYTES:
        raise ConfigError(
            f"a worker configuration of {len(data)} bytes does not fit a pipe "
            f"({PIPE_CAPACITY_BYTES} bytes): shorten the URLs and paths in it"
        )
    read_fd, write_fd = os.pipe()
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view) :]
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return read_fd


def read_config(fd: int) -> str:
    """Everything the parent wrote into the pipe `fd` (closed afterwards)."""
    try:
        with os.fdopen(fd, "rb") as pipe:
            return pipe.read().decode("utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the configuration from descriptor {fd} ({exc.strerror}): start "
            "workers through `fleetinfer run`, which passes it"
        ) from exc
