"""`fleetinfer run APP:TASK`: run a node (sized workers, metrics, drain on SIGTERM) on a queue."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from fleetinfer.cli.common import (
    DEFAULT_QUEUE,
    DEFAULT_RESULTS,
    ExitCode,
    JsonOption,
    QueueOption,
    ResultsOption,
    configure_logging,
    exit_on_error,
    print_json,
    stderr,
)
from fleetinfer.cli.paths import add_working_directory_to_path
from fleetinfer.node.agent import NodeConfig, NodeReport, NodeStarted, run_node
from fleetinfer.node.preemption import DEFAULT_SPOT_ENDPOINT
from fleetinfer.node.supervisor import RestartPolicy


def run(
    target: Annotated[
        str, typer.Argument(help="module:attribute naming an App (all its tasks) or one task.")
    ],
    queue: QueueOption = DEFAULT_QUEUE,
    results: ResultsOption = DEFAULT_RESULTS,
    models: Annotated[
        Path | None, typer.Option("--models", help="Model repository for ctx.model(...).")
    ] = None,
    client_mode: Annotated[
        str,
        typer.Option("--client", help="Model client: inprocess, or shared (fleetinfer serve)."),
    ] = "inprocess",
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", help="Worker processes (default: min(cores, memory))."),
    ] = None,
    grace_s: Annotated[
        float, typer.Option("--grace-s", help="Seconds in-flight tasks get on SIGTERM.")
    ] = 100.0,
    metrics_port: Annotated[
        int,
        typer.Option("--metrics-port", help="Port of /metrics and /healthz; 0 = any, -1 = off."),
    ] = 0,
    spot_endpoint: Annotated[
        str | None,
        typer.Option(
            "--spot-endpoint",
            help=f"Watch for spot interruption notices at this metadata URL ({DEFAULT_SPOT_ENDPOINT}).",
        ),
    ] = None,
    spot_interval_s: Annotated[
        float, typer.Option("--spot-interval-s", help="Seconds between spot notice checks.")
    ] = 5.0,
    exit_when_empty: Annotated[
        bool, typer.Option("--exit-when-empty", help="Drain and exit once the queue is empty.")
    ] = False,
    max_message_bytes: Annotated[
        int, typer.Option("--max-message-bytes", help="Dead-letter bodies above this size.")
    ] = 256 * 1024,
    restart_backoff_s: Annotated[
        float,
        typer.Option("--restart-backoff-s", help="First delay before restarting a crashed worker."),
    ] = 0.5,
    restart_backoff_max_s: Annotated[
        float,
        typer.Option("--restart-backoff-max-s", help="Cap of the doubling restart delay."),
    ] = 30.0,
    preload: Annotated[
        bool,
        typer.Option(
            "--preload/--no-preload",
            help="Fork workers from one process that imported the task once (less memory each); "
            "--no-preload starts each as a fresh interpreter. A task module that starts threads "
            "when imported gets fresh workers either way, with a warning.",
        ),
    ] = True,
    worker_nice: Annotated[
        int | None,
        typer.Option(
            "--worker-nice",
            help="Niceness added to each worker (0..19); default 10 with a model server "
            "(--client shared or triton: the server's executions run first), else 0.",
        ),
    ] = None,
    model_deadline_s: Annotated[
        str | None,
        typer.Option(
            "--model-deadline-s",
            help="Reply deadline of model calls: seconds for every model, or 'model=s,…' "
            "(e.g. 'cdnet=20,60'); default max(30 s, 20 × the slowest recent call).",
        ),
    ] = None,
    server_probe_interval_s: Annotated[
        float,
        typer.Option("--server-probe-interval-s", help="Seconds between model server probes."),
    ] = 2.0,
    server_probe_timeout_s: Annotated[
        float, typer.Option("--server-probe-timeout-s", help="Deadline of one server probe.")
    ] = 5.0,
    server_probe_failures: Annotated[
        int,
        typer.Option(
            "--server-probe-failures",
            help="Failed probes in a row after which the model server is restarted.",
        ),
    ] = 3,
    json_output: JsonOption = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every task.")] = False,
) -> None:
    """Run the tasks of TARGET from the queue until SIGTERM (or an empty queue).

    Exit code 0 after a clean drain; 7 when the drain released tasks it was running (the grace
    ended, or a second signal cut it short): they run again, here or on another node."""
    configure_logging(verbose)
    with exit_on_error():
        add_working_directory_to_path()
        config = NodeConfig(
            target=target,
            queue_url=queue,
            results_url=results,
            models=models,
            client_mode=client_mode,
            workers=workers,
            grace_s=grace_s,
            metrics_port=None if metrics_port < 0 else metrics_port,
            spot_endpoint=spot_endpoint,
            spot_interval_s=spot_interval_s,
            exit_when_empty=exit_when_empty,
            max_message_bytes=max_message_bytes,
            restart=RestartPolicy(base_s=restart_backoff_s, max_s=restart_backoff_max_s),
            verbose=verbose,
            preload_workers=preload,
            worker_nice=worker_nice,
            model_deadlines=model_deadline_s,
            server_probe_interval_s=server_probe_interval_s,
            server_probe_timeout_s=server_probe_timeout_s,
            server_probe_failures=server_probe_failures,
        )
        report = run_node(config, on_ready=_ready_printer(json_output))
        _print_report(report, json_output)
    if not report.clean:
        raise typer.Exit(ExitCode.DRAIN_INCOMPLETE)


def _ready_printer(json_output: bool) -> Callable[[NodeStarted], None]:
    def ready(started: NodeStarted) -> None:
        plan = started.plan
        if json_output:
            print_json(
                {
                    "event": "ready",
                    "pid": started.pid,
                    "metrics_url": started.metrics_url,
                    "workers": plan.workers,
                    "sizing": plan.reason,
                    "by_cores": plan.by_cores,
                    "by_memory": plan.by_memory,
                    "worker_pss_bytes": plan.worker_pss_bytes,
                }
            )
            return
        where = f", metrics {started.metrics_url}/metrics" if started.metrics_url else ""
        stderr.print(
            f"node {started.pid}: {plan.workers} workers ({_sizing_text(started)}){where}",
            soft_wrap=True,
        )

    return ready


def _sizing_text(started: NodeStarted) -> str:
    plan = started.plan
    if plan.reason == "requested":
        return "--workers"
    pss_mib = (plan.worker_pss_bytes or 0) / 2**20
    return f"by cores {plan.by_cores}, by memory {plan.by_memory} at {pss_mib:.0f} MiB PSS each"


def _print_report(report: NodeReport, json_output: bool) -> None:
    if json_output:
        print_json(
            {
                "event": "stopped",
                "reason": report.reason,
                "outcomes": report.outcomes,
                "restarts": report.restarts,
                "duration_s": round(report.duration_s, 3),
                "drain_s": round(report.drain_s, 3),
                "clean": report.clean,
            }
        )
        return
    done = ", ".join(f"{k} {v}" for k, v in report.outcomes.items() if v) or "no tasks"
    stderr.print(
        f"node stopped ({report.reason}) after {report.duration_s:.1f} s: {done}; "
        f"{report.restarts} restart(s), drain {report.drain_s:.1f} s"
        + ("" if report.clean else " (not clean: tasks were released unfinished)"),
        soft_wrap=True,
    )
