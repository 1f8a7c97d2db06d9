"""`fleetinfer registry` and `fleetinfer rollout` as a user runs them, on a folder registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from fleetinfer.cli.app import app
from fleetinfer.cli.common import ExitCode
from tests.helpers.fleet import CDNET

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_push_list_show_and_a_refused_rollout_from_the_command_line(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(CDNET, repo / "cdnet")
    registry = f"file://{tmp_path / 'registry'}"
    code, out = _run("registry", "push", str(repo / "cdnet"), "--registry", registry, "--json")
    assert code == 0, out
    assert json.loads(out)["version"] == 1
    code, out = _run("registry", "push", str(repo / "cdnet"), "--registry", registry)
    assert code == ExitCode.CONFIG
    assert "immutable" in out
    assert _run("registry", "desire", "cdnet", "1", "--registry", registry)[0] == 0
    code, out = _run("registry", "list", "--registry", registry)
    assert "v1 cpu" in out
    assert "desired: * -> v1" in out
    code, out = _run("registry", "show", "cdnet", "1", "--registry", registry)
    assert json.loads(out)[0]["build"]["size_bytes"] > 0
    code, out = _run("rollout", "start", "cdnet", "--version", "1", "--group", "group=a",
                     "--soak", "10s", "--gate", "error_rate<=0.01", "--registry", registry)  # fmt: skip
    assert code == ExitCode.INPUT
    assert "matches no live node" in out
    code, out = _run("rollout", "status", "cdnet", "--registry", registry)
    assert (code, out.strip()) == (0, "no rollout")
