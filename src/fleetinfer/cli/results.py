"""`fleetinfer results get ID` and `fleetinfer results export`: read the results store."""

from __future__ import annotations

from typing import Annotated

import typer

from fleetinfer.cli.common import (
    DEFAULT_RESULTS,
    JsonOption,
    ResultsOption,
    exit_on_error,
    print_json,
    stderr,
    stdout,
)
from fleetinfer.errors import InputError
from fleetinfer.results import open_store
from fleetinfer.results.export import FORMATS, check_format, export_results, result_record
from fleetinfer.results.rows import check_status

results_app = typer.Typer(
    help="Read the results store: one result, or all of them into a file.",
    no_args_is_help=True,
)

StatusOption = Annotated[
    str | None,
    typer.Option("--status", "-s", help="Only results of this status: succeeded, rejected, dead."),
]
TaskOption = Annotated[
    str | None, typer.Option("--task", "-t", help="Only results of this task name.")
]


@results_app.command("get")
def get(
    task_id: Annotated[str, typer.Argument(help="The task id (as `submit --json` prints it).")],
    results: ResultsOption = DEFAULT_RESULTS,
    json_output: JsonOption = False,
) -> None:
    """Print the result of one task; exit 4 when the store has none."""
    with exit_on_error():
        with open_store(results) as store:
            result = store.get(task_id)
        if result is None:
            raise InputError(
                f"no result for task id {task_id!r} in {results}: the task has not finished "
                "(see `fleetinfer status`) or the id is wrong"
            )
        record = result_record(result)
        if json_output:
            print_json(record)
            return
        for key, value in record.items():
            stdout.print(f"{key}: {value}", markup=False)


@results_app.command("export")
def export(
    results: ResultsOption = DEFAULT_RESULTS,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help=f"One of {', '.join(FORMATS)}.")
    ] = "jsonl",
    out: Annotated[
        str, typer.Option("--out", "-o", help="File to write; '-' is stdout (not for parquet).")
    ] = "-",
    status: StatusOption = None,
    task: TaskOption = None,
) -> None:
    """Write every result (or those of one status / task) as JSON lines, CSV or Parquet."""
    with exit_on_error():
        check_format(fmt)
        wanted = None if status is None else check_status(status)
        with open_store(results) as store:
            rows = export_results(store.iter_results(status=wanted, task_name=task), out, fmt)
        if out != "-":
            stderr.print(f"exported {rows} result(s) to {out}")
