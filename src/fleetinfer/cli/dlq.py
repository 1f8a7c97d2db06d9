"""`fleetinfer dlq list|redrive --queue URL`: look at dead letters, send them back."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from fleetinfer.cli.common import (
    DEFAULT_QUEUE,
    JsonOption,
    QueueOption,
    exit_on_error,
    print_json,
    stdout,
)
from fleetinfer.errors import InputError
from fleetinfer.queue import open_broker

dlq_app = typer.Typer(help="The dead-letter queue: list messages and why, or redrive them.")

LimitOption = Annotated[int, typer.Option("--limit", "-n", help="At most this many.")]


@dlq_app.command("list")
def list_dead(
    queue: QueueOption = DEFAULT_QUEUE, limit: LimitOption = 100, json_output: JsonOption = False
) -> None:
    """List dead letters, oldest first, with the reason each one died."""
    with exit_on_error():
        _check_limit(limit)
        with open_broker(queue) as broker:
            dead = broker.dead_letters(limit=limit)
        if json_output:
            print_json(
                [
                    {
                        "id": d.id,
                        "reason": d.reason,
                        "receive_count": d.receive_count,
                        "dead_at": d.dead_at,
                        "body": d.body,
                    }
                    for d in dead
                ]
            )
            return
        table = Table(title=f"dead letters of {queue} ({len(dead)} shown)")
        for column in ("message id", "receives", "reason", "body"):
            table.add_column(column, overflow="fold")
        for d in dead:
            table.add_row(d.id, str(d.receive_count), d.reason, d.body[:60])
        stdout.print(table)


@dlq_app.command("redrive")
def redrive(
    queue: QueueOption = DEFAULT_QUEUE,
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="At most this many.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Move dead letters back to the queue with a fresh receive count."""
    with exit_on_error():
        if limit is not None:
            _check_limit(limit)
        with open_broker(queue) as broker:
            moved = broker.redrive(limit=limit)
        if json_output:
            print_json({"redriven": moved, "queue": queue})
        else:
            stdout.print(f"moved {moved} dead letter(s) back to {queue}")


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
