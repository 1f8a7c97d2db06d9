"""`fleetinfer demo`: the main job on the embedded defaults (one node, SQLite).

The job is a workload's, found through the entry-point group `fleetinfer.demos` (roadchange
registers `roadchange = "roadchange.demo"`): fleetinfer imports no workload by name. A demo
module has `DemoConfig`, `prepare`, `enqueue` and `run` (see roadchange/src/roadchange/demo.py).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fleetinfer.cli.common import JsonOption, exit_on_error, print_json, stdout
from fleetinfer.errors import ConfigError

DEMO_GROUP = "fleetinfer.demos"
DEFAULT_DEMO = "roadchange"


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stdout,
        transient=False,
    )


def _load_demo(name: str = DEFAULT_DEMO) -> Any:
    """The demo module a workload registered under `name` in `fleetinfer.demos`."""
    found = [ep for ep in entry_points(group=DEMO_GROUP) if ep.name == name]
    if not found:
        raise ConfigError(
            f"fleetinfer demo runs the {name} workload, which is not installed: run "
            f"`pip install {name}` (from a clone: `pip install ./{name}`, or `make demo`)"
        )
    try:
        return found[0].load()
    except ImportError as exc:
        raise ConfigError(f"the {name} demo is registered but does not import: {exc}") from exc


def demo(
    segments: Annotated[int, typer.Option("--segments", "-n", min=1, help="Road segments.")] = 200,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", min=1, help="Workers (default: sized).")
    ] = None,
    workdir: Annotated[
        Path, typer.Option("--workdir", help="Where segments, queue and results go.")
    ] = Path(".fleetinfer/demo"),
    client_mode: Annotated[
        str, typer.Option("--client", help="Model client: shared (the node's server) or inprocess.")
    ] = "shared",
    as_json: JsonOption = False,
) -> None:
    """Generate road segments, queue one change-detection task each, run a node, summarise."""
    with exit_on_error():
        job = _load_demo()
    config = job.DemoConfig(
        workdir=workdir, segments=segments, workers=workers, client_mode=client_mode
    )
    with exit_on_error(), _progress() as progress:
        progress.disable = as_json
        generating = progress.add_task("generating segments", total=segments)
        paths = job.prepare(config, lambda n: progress.update(generating, completed=n))
        tasks = job.enqueue(config, paths)
        running = progress.add_task("checking segments", total=len(tasks))
        summary = job.run(config, tasks, lambda n: progress.update(running, completed=n))
        progress.update(running, completed=summary.succeeded)
    if as_json:
        print_json(summary.to_json())
    else:
        _print_summary(summary)


def _print_summary(summary: Any) -> None:
    q = summary.quality
    table = Table(title="fleetinfer demo: roadchange on one node", show_header=False)
    table.add_row("tasks", f"{summary.succeeded} of {summary.tasks} succeeded")
    table.add_row("workers", f"{summary.node.plan.workers} ({summary.node.plan.reason})")
    table.add_row("wall time", f"{summary.wall_s:.1f} s")
    table.add_row("throughput", f"{summary.tasks_per_min:.1f} tasks/min")
    table.add_row("model calls", f"{summary.model_calls} ({summary.model_calls_per_s:.1f} calls/s)")
    for name, mib in summary.pss_mib.items():
        table.add_row(f"PSS {name}", f"{mib:.1f} MiB")
    table.add_row("quality", f"macc {q.macc:.3f}  f1 {q.f1:.3f}  accuracy {q.accuracy:.3f}")
    table.add_row(
        "", f"precision {q.precision:.3f}  recall {q.recall:.3f}  remap f1 {q.remap_f1:.3f}"
    )
    table.add_row("failed", str(q.failed))
    stdout.print(table)
