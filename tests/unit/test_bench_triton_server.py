"""`TritonServer` waits for the ready file its server script writes, not for a stdout line:
tritonserver logs to the same stdout, and a slow start once split the ready line with a log line
(the bench then timed out on a server that was serving). A stand-in for PyTriton's python plays
the server here: it writes a log line in two halves around its ready file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fleetinfer.bench.triton import TritonServer, TritonServerError

FAKE = """#!/bin/bash
while [ $# -gt 0 ]; do [ "$1" = "--ready-file" ] && ready="$2"; shift; done
printf 'I1202 model_lifecycle.cc:839] "successfully loaded cdn'
{ready_step}
printf 'et-l"\\n'
exec sleep 60
"""
WRITES_READY = 'echo \'{"ready": true}\' > "$ready.partial"; mv "$ready.partial" "$ready"'


def fake_python(folder: Path, ready_step: str) -> Path:
    path = folder / "python"
    path.write_text(FAKE.replace("{ready_step}", ready_step))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_server_is_ready_when_its_ready_file_appears_whatever_it_prints(
    tmp_path: Path,
) -> None:
    server = TritonServer(fake_python(tmp_path, WRITES_READY), tmp_path, threads=1)
    with server:
        assert server.process is not None
        assert server.process.poll() is None
        assert 0 < server.start_s < 30
    assert server.process is None  # stopped on exit


def test_a_server_that_exits_before_it_is_ready_is_an_error_with_its_log(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "exit 3")
    server = TritonServer(python, tmp_path, threads=1)
    with pytest.raises(
        TritonServerError,
        match=r"exited with code 3.*successfully loaded cdn.*\(start attempt 2 of 2\)",
    ):
        server.__enter__()
    assert server.process is None  # stopped, its folder removed
    assert not server.log_path.exists()  # the last start's folder went with it


def test_a_start_that_fails_once_is_tried_again(tmp_path: Path) -> None:
    """PyTriton now and then fails to load a model on a busy machine (its stub cannot reach the
    handshake socket) and the next start succeeds: here the first start exits, the second
    serves."""
    marker = tmp_path / "started-once"
    python = fake_python(
        tmp_path, f"[ -e {marker} ] || {{ touch {marker}; exit 1; }}; {WRITES_READY}"
    )
    with TritonServer(python, tmp_path, threads=1) as server:
        assert marker.exists()
        assert server.process is not None
        assert server.process.poll() is None
        assert server.ready_path.exists()


def test_a_server_that_hangs_is_stopped_and_tried_again(tmp_path: Path) -> None:
    hung = tmp_path / "hung-once"
    python = fake_python(
        tmp_path, f"[ -e {hung} ] || {{ touch {hung}; exec sleep 60; }}; {WRITES_READY}"
    )
    with TritonServer(python, tmp_path, threads=1, start_timeout_s=1.0) as server:
        assert server.process is not None
        assert server.process.poll() is None
        assert 1.0 <= server.start_s < 30
