"""The README and docs/ cannot rot: the README's Python blocks and the newcomer's quickstart (with
an own ONNX model) run as written; every Python block in docs/ compiles, every TOML block is a
valid model config, and every `fleetinfer` / `roadchange` command line in a shell block parses
against the real command-line interface."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main

from fleetinfer.config import load_config_file
from fleetinfer.server.repository import parse_config
from tests.helpers.tiny_models import affine_model

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
QUICKSTART_HEADING = "## Your own model in five minutes"


def blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.DOTALL)


def quickstart() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(QUICKSTART_HEADING, 1)[1]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)[0]


def env_with_venv() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLEETINFER_")},
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }


def test_the_readme_has_python_examples_and_is_at_most_200_lines() -> None:
    assert len(blocks(ROOT / "README.md", "python")) >= 2
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_the_readme_python_blocks_run_in_order(tmp_path: Path) -> None:
    script = tmp_path / "readme.py"
    script.write_text("\n\n".join(blocks(ROOT / "README.md", "python")))
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env_with_venv(), capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=lambda p: p.name)
def test_the_python_blocks_of_every_page_are_valid_python(page: Path) -> None:
    """Docs blocks that need a running server or a trained model are compiled, not run."""
    for block in blocks(page, "python"):
        compile(block, f"{page.name} block", "exec")


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "toml")], ids=lambda p: p.name)
def test_every_toml_example_in_a_page_is_a_valid_node_or_model_config(
    page: Path, tmp_path: Path
) -> None:
    """A block with a `[node]` table is a fleetinfer.toml; any other is a model's config.toml."""
    for block in blocks(page, "toml"):
        if "node" in tomllib.loads(block):
            (tmp_path / "fleetinfer.toml").write_text(block)
            load_config_file(tmp_path / "fleetinfer.toml")
            continue
        name = tomllib.loads(block)["name"]
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "config.toml").write_text(block)
        parse_config(tmp_path / name / "config.toml", expected_name=name)


def test_the_newcomer_quickstart_with_an_own_onnx_model_runs_as_written(tmp_path: Path) -> None:
    affine_model(tmp_path / "my_model.onnx", features=4, scale=2.0, bias=1.0)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", quickstart()], cwd=tmp_path, env=env_with_venv(),
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "y: [3.0, 5.0, 7.0, 9.0]" in done.stdout.replace("'y': ", "y: ")
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(rows) == 3  # a header and one row per task, though the file was submitted twice
    assert (tmp_path / "models" / "my_model" / "config.toml").is_file()


def command_lines(page: Path) -> list[list[str]]:
    """Every `fleetinfer …` / `roadchange …` command of the page's shell blocks, as arguments."""
    found: list[list[str]] = []
    for block in blocks(page, "bash"):
        text = re.sub(r"<<'(\w+)'\n.*?\n\1\n", "\n", block, flags=re.DOTALL)  # here-documents
        for line in text.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and Path(words[0]).name in ("fleetinfer", "roadchange"):
                found.append([Path(words[0]).name, *_until_shell_operator(words[1:])])
    return found


def _until_shell_operator(words: list[str]) -> list[str]:
    for index, word in enumerate(words):
        if word in (";", "&&", "|", ">", "done"):
            return words[:index]
    return words


def parses(program: str, args: list[str]) -> None:
    """Parse (not run) a command line, descending into command groups."""
    if program == "fleetinfer":
        from fleetinfer.cli.app import app
    else:
        from roadchange.cli import app
    command: Any = typer.main.get_command(app)
    context = command.make_context(program, list(args))
    while hasattr(command, "get_command") and _pending(context):
        name, *rest = _pending(context)
        sub = command.get_command(context, name)
        assert sub is not None, f"{program} has no command {name!r}"
        command, context = sub, sub.make_context(name, rest, parent=context)


def _pending(context: Any) -> list[str]:
    protected = getattr(context, "_protected_args", None) or getattr(context, "protected_args", [])
    return [*protected, *context.args]


@pytest.mark.parametrize("page", [p for p in PAGES if command_lines(p)], ids=lambda p: p.name)
def test_every_command_line_in_a_page_parses(page: Path) -> None:
    for program, *args in command_lines(page):
        try:
            parses(program, args)
        except Exception as exc:  # typer's own click: its UsageError is not click's
            if type(exc).__name__ != "Exit":
                pytest.fail(f"{page.name}: `{program} {' '.join(args)}` does not parse: {exc!r}")
