"""`fleetinfer submit TASK [FILE|-] --queue URL`: one task per JSON line.

With `--id-field NAME` or `--id-from-payload` every task gets a stable id, so submitting the same
file twice queues no task twice and runs none again (see `fleetinfer.payloads`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

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
from fleetinfer.node.attributes import parse_requirements
from fleetinfer.payloads import ids_from_content, ids_from_field, parse_jsonl
from fleetinfer.queue import Broker, open_broker
from fleetinfer.queue.classes import class_name
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
    id_field: Annotated[
        str | None,
        typer.Option(
            "--id-field",
            help="Take each task's id from this field of its payload (a string or an integer).",
        ),
    ] = None,
    id_from_payload: Annotated[
        bool,
        typer.Option(
            "--id-from-payload",
            help="Derive each task's id from its content: sha256 of the task name and the "
            "payload's canonical JSON.",
        ),
    ] = False,
    requires: Annotated[
        list[str] | None,
        typer.Option(
            "--requires",
            help="Run only on nodes with this capability, KEY=VALUE (repeatable; e.g. "
            "arch=arm64, cpu.avx512_vnni=true, accelerator=cuda, label.pool=gold); default: "
            "what the task declares with @app.task(requires=...).",
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Send one task per JSON line of FILE (or stdin) to the queue."""
    with exit_on_error():
        if id_field is not None and id_from_payload:
            raise InputError("give --id-field or --id-from-payload, not both")
        name = task_name_for(target, task)
        required = requirements_for(target, task, requires)
        payloads = read_payloads(source)
        task_ids = _task_ids(payloads, name, source, id_field, id_from_payload=id_from_payload)
        with open_broker(queue) as broker:
            ids = _send_with_progress(
                broker, name, payloads, task_ids, quiet=json_output, requires=required
            )
        placed = class_name(required) if required else None
        if json_output:
            report = {"submitted": len(ids), "task": name, "queue": queue, "ids": ids}
            print_json({**report, "class": placed} if placed else report)
        else:
            where = f" (capability class {placed})" if placed else ""
            stdout.print(f"submitted {len(ids)} task(s) of {name!r} to {queue}{where}")


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


def requirements_for(target: str, task: str | None, items: list[str] | None) -> dict[str, str]:
    """`--requires` when given, else what the task named by `module:attr` declares."""
    if items:
        return parse_requirements(items)
    if ":" not in target:
        return {}
    resolved = resolve_target(target)
    declared = resolved.app.get(task) if task is not None else resolved.task
    if declared is None:
        declared = resolved.app.get(resolved.task_name())
    return dict(declared.requires)


def read_payloads(source: str) -> list[Any]:
    """Every non-blank line of `source` ('-' = stdin) parsed as JSON."""
    if source == "-":
        return parse_jsonl(sys.stdin.buffer, "<stdin>")
    path = Path(source)
    try:
        with path.open("rb") as file:
            return parse_jsonl(file, str(path))
    except OSError as exc:
        raise InputError(f"cannot read payload file {source!r}: {exc.strerror}") from exc


def _task_ids(
    payloads: list[Any], name: str, source: str, id_field: str | None, *, id_from_payload: bool
) -> list[str] | None:
    where = "<stdin>" if source == "-" else source
    if id_field is not None:
        return ids_from_field(payloads, id_field, where)
    if id_from_payload:
        return ids_from_content(payloads, name, where)
    return None


def _send_with_progress(
    broker: Broker,
    name: str,
    payloads: list[Any],
    task_ids: list[str] | None,
    *,
    quiet: bool,
    requires: dict[str, str],
) -> list[str]:
    sent: list[str] = []
    with Progress(transient=True, disable=quiet or len(payloads) < 10 * BATCH) as progress:
        bar = progress.add_task(f"submitting {name}", total=len(payloads))
        for start in range(0, len(payloads), BATCH):
            chunk = payloads[start : start + BATCH]
            ids = None if task_ids is None else task_ids[start : start + BATCH]
            sent += send_tasks(
                broker, name, chunk, batch_size=BATCH, task_ids=ids, requires=requires
            )
            progress.advance(bar, len(chunk))
    return sent
