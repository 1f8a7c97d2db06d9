"""`fleetinfer submit TASK [FILE|-] --queue URL`: one task per JSON line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.progress import Progress

from fleetinfer.cli.common import (
    DEFAULT_QUEUE,
    JsonOption,
    QueueOption,
    exit_on_error,
    print_json,
    stdout,
)
from fleetinfer.cli.paths import add_working_directory_to_path
from fleetinfer.errors import InputError
from fleetinfer.queue import Broker, open_broker
from fleetinfer.task import check_task_name, resolve_target, send_tasks

BATCH = 100


def submit(
    target: Annotated[
        str,
        typer.Argument(
            help="Task name, or module:attribute naming a task or an app (with --task)."
        ),
    ],
    source: Annotated[
        str, typer.Argument(help="JSONL file, one payload per line; '-' reads stdin.")
    ] = "-",
    queue: QueueOption = DEFAULT_QUEUE,
    task: Annotated[
        str | None, typer.Option("--task", "-t", help="Task of the app named by TARGET.")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Send one task per JSON line of FILE (or stdin) to the queue."""
    with exit_on_error():
        name = task_name_for(target, task)
        payloads = read_payloads(source)
        with open_broker(queue) as broker:
            sent = _send_with_progress(broker, name, payloads, quiet=json_output)
        if json_output:
            print_json({"submitted": sent, "task": name, "queue": queue})
        else:
            stdout.print(f"submitted {sent} task(s) of {name!r} to {queue}")


def task_name_for(target: str, task: str | None) -> str:
    """A plain task name as given; `module:attr` is imported and its task name read."""
    if ":" not in target:
        check_task_name(target)
        if task is not None and task != target:
            raise InputError(f"give the task once: TARGET is {target!r} but --task is {task!r}")
        return target
    add_working_directory_to_path()
    resolved = resolve_target(target)
    if task is not None:
        return resolved.app.get(task).name
    return resolved.task_name()


def read_payloads(source: str) -> list[Any]:
    """Every non-blank line of `source` ('-' = stdin) parsed as JSON."""
    if source == "-":
        return parse_jsonl(sys.stdin, "<stdin>")
    path = Path(source)
    try:
        with path.open(encoding="utf-8") as file:
            return parse_jsonl(file, str(path))
    except OSError as exc:
        raise InputError(f"cannot read payload file {source!r}: {exc.strerror}") from exc


def parse_jsonl(lines: TextIO | Iterable[str], name: str) -> list[Any]:
    """JSON values, one per non-blank line; the first bad line raises `InputError`."""
    payloads: list[Any] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            payloads.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InputError(
                f"line {number} of {name} is not JSON ({exc.msg} at column {exc.colno}): "
                f"expected one JSON payload per line, got {line.strip()[:80]!r}"
            ) from exc
    return payloads


def _send_with_progress(broker: Broker, name: str, payloads: list[Any], *, quiet: bool) -> int:
    with Progress(transient=True, disable=quiet or len(payloads) < 10 * BATCH) as progress:
        bar = progress.add_task(f"submitting {name}", total=len(payloads))
        for start in range(0, len(payloads), BATCH):
            chunk = payloads[start : start + BATCH]
            send_tasks(broker, name, chunk, batch_size=BATCH)
            progress.advance(bar, len(chunk))
    return len(payloads)
