"""What every command shares: named exit codes, the embedded defaults, error printing."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from fleetinfer.errors import ConfigError, FleetinferError, InputError, TransientError
from fleetinfer.node.agent import DEFAULT_QUEUE_URL, DEFAULT_RESULTS_URL

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


class ExitCode(IntEnum):
    """What a `fleetinfer` process returns."""

    OK = 0
    FAILED = 1  # an unexpected error (a bug): the traceback is printed
    USAGE = 2  # bad command-line usage (typer / click)
    CONFIG = 3  # fix the configuration: URL, target, option
    INPUT = 4  # fix the input: a file, a payload
    UNAVAILABLE = 5  # a service could not be reached: retry later
    GATE = 6  # the accuracy gate refused to publish a compiled model
    DRAIN_INCOMPLETE = 7  # a node drained, but released (or lost) tasks it was running
    DEAD_LETTERS = 8  # `run --exit-when-empty`: a task of this run was dead-lettered
    INTERRUPTED = 130  # Ctrl-C outside a node's graceful drain


QueueOption = Annotated[
    str,
    typer.Option(
        "--queue",
        "-q",
        envvar="FLEETINFER_QUEUE",
        help="Queue URL: sqlite:///file.db, redis://host:6379/0?queue=name, sqs://name?region=…",
    ),
]
ResultsOption = Annotated[
    str,
    typer.Option(
        "--results",
        "-r",
        envvar="FLEETINFER_RESULTS",
        help="Results store URL: sqlite:///file.db or postgresql://user@host/db",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]

DEFAULT_QUEUE = DEFAULT_QUEUE_URL
DEFAULT_RESULTS = DEFAULT_RESULTS_URL


def exit_code_for(error: FleetinferError) -> ExitCode:
    """The exit code that tells a script what to do about `error`."""
    if isinstance(error, ConfigError):
        return ExitCode.CONFIG
    if isinstance(error, InputError):
        return ExitCode.INPUT
    if isinstance(error, TransientError):
        return ExitCode.UNAVAILABLE
    return ExitCode.FAILED


@contextmanager
def exit_on_error() -> Iterator[None]:
    """Print our errors as one red line on stderr and exit with their named code."""
    try:
        yield
    except FleetinferError as exc:
        stderr.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
        raise typer.Exit(exit_code_for(exc)) from None
    except KeyboardInterrupt:
        stderr.print("interrupted")
        raise typer.Exit(ExitCode.INTERRUPTED) from None


def print_json(value: Any) -> None:
    """One JSON document on stdout (no rich markup, no wrapping)."""
    sys.stdout.write(json.dumps(value, default=str) + "\n")
    sys.stdout.flush()


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
