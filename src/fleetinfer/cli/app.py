"""The `fleetinfer` command: one typer app, one module per command group.

fleetinfer submit TASK [FILE|-] --queue URL
fleetinfer run APP:TASK --queue URL --results URL [--workers N] [--exit-when-empty] …
fleetinfer status --queue URL [--json]
fleetinfer dlq list|redrive --queue URL
fleetinfer serve --models REPO                 (the node's model server)
fleetinfer demo                                (when fleetinfer.cli.demo is installed)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import typer

from fleetinfer.cli.dlq import dlq_app
from fleetinfer.cli.run import run
from fleetinfer.cli.status import status
from fleetinfer.cli.submit import submit

app = typer.Typer(
    name="fleetinfer",
    help="Run model-heavy task pipelines across a fleet of machines at the lowest cost per task.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("submit")(submit)
app.command("run")(run)
app.command("status")(status)
app.add_typer(dlq_app, name="dlq")


def _optional_command(name: str, module: str, attribute: str) -> None:
    """Register `fleetinfer <name>` from `module.attribute` if that module exists yet."""
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return
    command: Callable[..., Any] = getattr(loaded, attribute)
    app.command(name)(command)


_optional_command("serve", "fleetinfer.cli.serve", "serve_command")
_optional_command("demo", "fleetinfer.cli.demo", "demo")


def main() -> None:
    """Entry point of the `fleetinfer` script and of `python -m fleetinfer`."""
    app()
