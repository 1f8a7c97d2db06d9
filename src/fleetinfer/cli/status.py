"""`fleetinfer status --queue URL`: queue depths, results by status, and rates over a sample."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Annotated, Any

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
from fleetinfer.queue.base import Broker, QueueStats
from fleetinfer.results import ResultStore, TaskStatus, open_store


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Depths and result counts at one moment."""

    at_s: float
    queue: QueueStats
    results: dict[str, int] | None


def status(
    queue: QueueOption = DEFAULT_QUEUE,
    results: Annotated[
        str | None,
        typer.Option("--results", "-r", envvar="FLEETINFER_RESULTS", help="Also count results."),
    ] = None,
    sample_s: Annotated[
        float, typer.Option("--sample-s", help="Measure rates over this many seconds (0 = off).")
    ] = 0.0,
    json_output: JsonOption = False,
) -> None:
    """Show how many tasks are visible, in flight, delayed and dead (and results, rates)."""
    with exit_on_error():
        if sample_s < 0:
            raise InputError(f"--sample-s must be >= 0 seconds, got {sample_s}")
        with open_broker(queue) as broker:
            store = open_store(results) if results else None
            try:
                report = status_report(broker, store, sample_s=sample_s)
            finally:
                if store is not None:
                    store.close()
            report["classes"] = class_report(broker)
        report["queue_url"] = queue
        if json_output:
            print_json(report)
        else:
            _print_table(report)


def status_report(broker: Broker, store: ResultStore | None, *, sample_s: float) -> dict[str, Any]:
    """Depths (and result counts) now; with `sample_s` > 0, rates per second over that time."""
    first = snapshot(broker, store)
    report: dict[str, Any] = {**asdict(first.queue), "pending": first.queue.pending}
    if first.results is not None:
        report["results"] = first.results
    if sample_s > 0:
        time.sleep(sample_s)
        report["rates_per_s"] = rates(first, snapshot(broker, store))
    return report


def class_report(broker: Broker) -> list[dict[str, Any]]:
    """Every capability class of the queue: its requirements, depths, and whether a running node
    consumed it lately (`unserved`: tasks there wait for a node that satisfies them)."""
    from fleetinfer.queue import open_broker
    from fleetinfer.queue.classes import (
        UNSERVED_AFTER_S,
        class_queue_url,
        class_requirements,
        consumed_at,
        list_classes,
    )

    names = list_classes(broker)
    seen = consumed_at(broker, names)
    rows = []
    for name in names:
        with open_broker(class_queue_url(broker.url, name)) as class_broker:
            stats = class_broker.stats()
        at = seen.get(name)
        age_s = None if at is None else round(max(time.time() - at, 0.0), 1)
        rows.append(
            {
                "class": name,
                "requires": class_requirements(name),
                **asdict(stats),
                "pending": stats.pending,
                "consumed_age_s": age_s,
                "unserved": age_s is None or age_s > UNSERVED_AFTER_S,
            }
        )
    return rows


def snapshot(broker: Broker, store: ResultStore | None) -> Snapshot:
    results = None
    if store is not None:
        results = {s.value: store.count(s) for s in TaskStatus}
    return Snapshot(time.monotonic(), broker.stats(), results)


def rates(first: Snapshot, second: Snapshot) -> dict[str, float]:
    """Change per second: pending (negative = draining), dead, and results stored."""
    elapsed_s = max(second.at_s - first.at_s, 1e-9)
    out = {
        "pending": (second.queue.pending - first.queue.pending) / elapsed_s,
        "dead": (second.queue.dead - first.queue.dead) / elapsed_s,
    }
    if first.results is not None and second.results is not None:
        stored = sum(second.results.values()) - sum(first.results.values())
        out["results"] = stored / elapsed_s
    return {k: round(v, 3) for k, v in out.items()}


def _print_table(report: dict[str, Any]) -> None:
    table = Table(title=f"queue {report['queue_url']}", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    for key in ("visible", "in_flight", "delayed", "dead", "pending"):
        table.add_row(key.replace("_", " "), str(report[key]))
    for key, value in report.get("results", {}).items():
        table.add_row(f"results {key}", str(value))
    for key, value in report.get("rates_per_s", {}).items():
        table.add_row(f"{key} per s", f"{value:+.2f}")
    stdout.print(table)
    if report.get("classes"):
        _print_classes(report["classes"])


def _print_classes(classes: list[dict[str, Any]]) -> None:
    table = Table(title="capability classes", show_header=True)
    for column in ("class", "visible", "in flight", "delayed", "dead", "consumed"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in classes:
        consumed = "no node" if row["unserved"] else f"{row['consumed_age_s']:.0f} s ago"
        cells = [str(row[k]) for k in ("visible", "in_flight", "delayed", "dead")]
        table.add_row(row["class"], *cells, consumed)
    stdout.print(table)
