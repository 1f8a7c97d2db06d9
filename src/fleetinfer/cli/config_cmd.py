"""`fleetinfer config show`: the node's effective configuration, secrets masked.

It reads what `fleetinfer run` reads, in the same order (./fleetinfer.toml or --config FILE, then
FLEETINFER_* variables), and prints every `[node]` key with its effective value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleetinfer.cli.common import JsonOption, exit_on_error, print_json, stdout
from fleetinfer.config import CONFIG_FILE, load_settings

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help=f"Configuration file (default: ./{CONFIG_FILE} when there is one).",
        dir_okay=False,
    ),
]

config_app = typer.Typer(help="The node configuration (fleetinfer.toml, FLEETINFER_*, flags).")


@config_app.command("show")
def show(config_file: ConfigOption = None, json_output: JsonOption = False) -> None:
    """Print the effective [node] configuration; passwords in URLs are shown as ***."""
    with exit_on_error():
        settings = load_settings(config_file)
        settings.secrets()  # a secret file that cannot be read is an error here too
        shown = settings.masked()
    if json_output:
        print_json({"node": shown})
        return
    stdout.print("[node]", markup=False)
    for key, value in shown.items():
        line = f"# {key} (not set)" if value is None else f"{key} = {_toml(value)}"
        stdout.print(line, markup=False, soft_wrap=True)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)
