"""`fleetinfer bench APP:TASK`: the same tasks through each serving mode, measured side by side.

    fleetinfer bench roadchange.tasks:check_segment --models roadchange/src/roadchange/models \\
        --payloads payloads.jsonl --tasks 16 --workers 8 --rounds 3 --out .fleetinfer/bench

Writes DIR/bench.json and DIR/bench.png; prints a table (or the JSON with --json).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fleetinfer.cli.common import JsonOption, exit_on_error, print_json, stderr, stdout
from fleetinfer.cli.paths import add_working_directory_to_path
from fleetinfer.errors import MissingExtraError

DEFAULT_MODES = "isolated-per-task,isolated,shared,triton"


def bench(
    target: Annotated[str, typer.Argument(help="module:task, the task to benchmark.")],
    models: Annotated[Path, typer.Option("--models", help="Model repository.")],
    payloads: Annotated[
        Path, typer.Option("--payloads", help="JSONL file, one payload per line (cycled).")
    ],
    tasks: Annotated[
        int, typer.Option("--tasks", "-n", min=1, help="Tasks per mode and round.")
    ] = 16,
    modes: Annotated[str, typer.Option("--modes", help="Comma-separated modes.")] = DEFAULT_MODES,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Interleaved rounds.")] = 3,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", min=1, help="Workers (default: cores).")
    ] = None,
    threads: Annotated[
        int, typer.Option("--threads", min=0, help="Total intra-op thread budget (0 = cores).")
    ] = 0,
    out: Annotated[Path, typer.Option("--out", help="Folder for bench.json and bench.png.")] = Path(
        ".fleetinfer/bench"
    ),
    instance: Annotated[
        str, typer.Option("--instance", help="Instance shape for the capacity projection.")
    ] = "r6i.8xlarge",
    instances: Annotated[
        Path | None, typer.Option("--instances", help="TOML/JSON table of instance shapes.")
    ] = None,
    pytriton_python: Annotated[
        Path | None,
        typer.Option(
            "--pytriton-python",
            envvar="FLEETINFER_PYTRITON_PYTHON",
            help="Python of the PyTriton venv (scripts/triton-venv.sh: .venv-triton/bin/python).",
        ),
    ] = None,
    server_instances: Annotated[
        int,
        typer.Option(
            "--server-instances",
            min=0,
            help="Concurrent executions per model in the shared server and Triton; each gets "
            "threads ÷ instances intra-op threads (0: one single-threaded execution per thread).",
        ),
    ] = 0,
    preload: Annotated[
        bool,
        typer.Option(
            "--preload/--no-preload",
            help="Node modes: fork workers from one process that imported the task once, as "
            "`fleetinfer run` does (--no-preload: fresh interpreters).",
        ),
    ] = True,
    call_pattern: Annotated[
        str | None,
        typer.Option(
            "--call-pattern",
            help="per-window: one window per model call (sets each payload's max_batch to 1, "
            "production's pattern); per-segment: the task's default, one call per segment. "
            "Default: the payloads as they are.",
        ),
    ] = None,
    calibration_tasks: Annotated[
        int, typer.Option("--calibration-tasks", min=1, help="Warm tasks measured for the limit.")
    ] = 5,
    as_json: JsonOption = False,
) -> None:
    """Run TASK's payloads through isolated-per-task, isolated, shared and triton; compare."""
    from fleetinfer.bench.instances import instance_shape, load_instances
    from fleetinfer.bench.payloads import load_payloads, with_call_pattern
    from fleetinfer.bench.report import build_report
    from fleetinfer.bench.runner import BenchConfig, run_bench
    from fleetinfer.node.sizing import usable_cores

    add_working_directory_to_path()
    logging.getLogger("fleetinfer.node").setLevel(logging.ERROR)  # not a line per node drained
    with exit_on_error():
        table = None if instances is None else load_instances(instances)
        shape = instance_shape(instance, table)
        config = BenchConfig(
            target=target,
            models=models,
            payloads=tuple(with_call_pattern(load_payloads(payloads, tasks), call_pattern)),
            modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
            rounds=rounds,
            workers=workers or max(1, int(usable_cores())),
            threads=threads,
            pytriton_python=pytriton_python,
            server_instances=server_instances,
            preload=preload,
            calibration_tasks=calibration_tasks,
        )
        with stderr.status("benchmarking") as status:
            run = run_bench(config, lambda text: status.update(f"bench: {text}"))
        report = build_report(run, shape, payloads_file=str(payloads))
        report["bench"]["call_pattern"] = call_pattern or "as in the payloads"
        _write(report, out)
    if as_json:
        print_json(report)
    else:
        stdout.print(summary_table(report))
        stdout.print(
            f"written: {out / 'bench.json'}"
            + ("" if "chart_error" in report else f", {out / 'bench.png'}")
        )


def _write(report: dict[str, Any], out: Path) -> None:
    from fleetinfer.bench.chart import write_chart

    out.mkdir(parents=True, exist_ok=True)
    try:
        write_chart(report, out / "bench.png")
    except MissingExtraError as exc:
        report["chart_error"] = str(exc)
        stderr.print(f"no chart: {exc}", soft_wrap=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=str) + os.linesep)


ROWS = (
    ("tasks/min", "tasks_per_min", "{:.1f}"),
    ("tasks/min, all workers busy", "tasks_per_min_steady", "{:.1f}"),
    ("efficiency (÷ limit)", "efficiency", "{:.2f}"),
    ("model calls/s", "model_calls_per_s", "{:.1f}"),
    ("latency p50 / s", "latency_p50_s", "{:.3f}"),
    ("latency p95 / s", "latency_p95_s", "{:.3f}"),
    ("first task / s", "first_task_s", "{:.2f}"),
    ("ramp-up / s (all workers' first tasks)", "ramp_s", "{:.2f}"),
    ("drain / s (the last tasks)", "drain_s", "{:.2f}"),
    ("CPU utilization", "cpu_utilization", "{:.2f}"),
    ("CPU s per task", "cpu_s_per_task", "{:.3f}"),
    ("node PSS / MiB", "node_pss_mib", "{:.0f}"),
    ("worker PSS / MiB", "worker_pss_mib", "{:.0f}"),
)

SPLIT_ROWS = (  # where a task's time goes (the report's `task_split`)
    ("task: in model calls / s", "model_wall_s"),
    ("task: own code / s", "own_wall_s"),
    ("task: own process CPU / s", "own_cpu_s"),
)


def summary_table(report: dict[str, Any]) -> Table:
    """Modes as columns, measures as rows; a mode that could not run shows why."""
    modes = report["modes"]
    limit = report["limit"]
    table = Table(
        title=f"fleetinfer bench {report['bench']['target']}: {report['bench']['tasks']} tasks, "
        f"{report['bench']['workers']} workers, medians of {report['bench']['rounds']} rounds; "
        f"limit {limit['tasks_per_min']:.1f} tasks/min ({limit['cpu_s_per_task']:.3f} CPU s/task)"
    )
    table.add_column("")
    for mode in modes:
        table.add_column(mode, justify="right")
    for label, key, fmt in ROWS:
        table.add_row(label, *(_cell(modes[m], key, fmt) for m in modes))
    for label, key in SPLIT_ROWS:
        table.add_row(label, *(_cell(modes[m].get("task_split", {}), key, "{:.3f}") for m in modes))
    shape = report["instance"]["name"]
    table.add_row(
        f"{shape}: workers (bound)",
        *(_projection_cell(modes[m]) for m in modes),
    )
    table.add_row(
        f"{shape}: tasks/min",
        *(_cell(modes[m].get("projection", {}), "tasks_per_min", "{:.0f}") for m in modes),
    )
    for mode, summary in modes.items():
        if "error" in summary:
            table.caption = f"{mode}: {summary['error']}"
    return table


def _cell(summary: dict[str, Any], key: str, fmt: str) -> str:
    if "error" in summary:
        return "—"
    value = summary.get(key)
    return "—" if value is None else fmt.format(value)


def _projection_cell(summary: dict[str, Any]) -> str:
    projection = summary.get("projection", {})
    if "error" in summary or "workers" not in projection:
        return "—"
    return f"{projection['workers']} ({projection['bound_by']})"
