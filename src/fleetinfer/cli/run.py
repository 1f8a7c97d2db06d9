"""`fleetinfer run APP:TASK`: run a node (sized workers, metrics, drain on SIGTERM) on a queue."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from fleetinfer.cli.common import (
    ExitCode,
    JsonOption,
    configure_logging,
    exit_on_error,
    print_json,
    stderr,
)
from fleetinfer.cli.config_cmd import ConfigOption
from fleetinfer.cli.paths import add_working_directory_to_path
from fleetinfer.config import load_settings, node_config
from fleetinfer.node.agent import NodeReport, NodeStarted, run_node
from fleetinfer.node.logs import announce_json
from fleetinfer.node.logs import configure_logging as configure_node_logging
from fleetinfer.node.preemption import DEFAULT_SPOT_ENDPOINT
from fleetinfer.node.preflight import one_line_errors


def run(
    target: Annotated[
        str | None,
        typer.Argument(
            help="module:attribute naming an App (all its tasks) or one task "
            "(default: node.target of the configuration)."
        ),
    ] = None,
    config_file: ConfigOption = None,
    queue: Annotated[
        str | None,
        typer.Option("--queue", "-q", help="Queue URL: sqlite:///file.db, redis://…, sqs://name?…"),
    ] = None,
    results: Annotated[
        str | None,
        typer.Option(
            "--results", "-r", help="Results store URL: sqlite:///file.db, postgresql://…"
        ),
    ] = None,
    models: Annotated[
        Path | None, typer.Option("--models", help="Model repository for ctx.model(...).")
    ] = None,
    client_mode: Annotated[
        str | None,
        typer.Option(
            "--client", help="Model client: inprocess, shared (a model server), or triton."
        ),
    ] = None,
    triton_url: Annotated[
        str | None,
        typer.Option("--triton-url", help="HOST:PORT of the Triton server (--client triton)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", help="Worker processes (default: min(cores, memory))."),
    ] = None,
    grace_s: Annotated[
        float | None, typer.Option("--grace-s", help="Seconds in-flight tasks get on SIGTERM.")
    ] = None,
    metrics_host: Annotated[
        str | None,
        typer.Option(
            "--metrics-host",
            help="Address of /metrics and /healthz (default 127.0.0.1; 0.0.0.0 in a container).",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", help="Port of /metrics and /healthz; 0 = any, -1 = off."),
    ] = None,
    spot_endpoint: Annotated[
        str | None,
        typer.Option(
            "--spot-endpoint",
            help=f"Watch for spot interruption notices at this metadata URL ({DEFAULT_SPOT_ENDPOINT}).",
        ),
    ] = None,
    spot_interval_s: Annotated[
        float | None, typer.Option("--spot-interval-s", help="Seconds between spot notice checks.")
    ] = None,
    exit_when_empty: Annotated[
        bool | None,
        typer.Option(
            "--exit-when-empty/--no-exit-when-empty",
            help="Drain and exit once the queue is empty; exit 8 if any task went dead.",
            show_default=False,
        ),
    ] = None,
    allow_dead_letters: Annotated[
        bool | None,
        typer.Option(
            "--allow-dead-letters/--no-allow-dead-letters",
            help="With --exit-when-empty: exit 0 even when tasks were dead-lettered.",
            show_default=False,
        ),
    ] = None,
    max_message_bytes: Annotated[
        int | None, typer.Option("--max-message-bytes", help="Dead-letter bodies above this size.")
    ] = None,
    restart_backoff_s: Annotated[
        float | None,
        typer.Option("--restart-backoff-s", help="First delay before restarting a crashed worker."),
    ] = None,
    restart_backoff_max_s: Annotated[
        float | None,
        typer.Option("--restart-backoff-max-s", help="Cap of the doubling restart delay."),
    ] = None,
    preload: Annotated[
        bool | None,
        typer.Option(
            "--preload/--no-preload",
            help="Fork workers from one process that imported the task once (less memory each); "
            "--no-preload starts each as a fresh interpreter. A task module that starts threads "
            "when imported gets fresh workers either way, with a warning.",
            show_default=False,
        ),
    ] = None,
    worker_nice: Annotated[
        int | None,
        typer.Option(
            "--worker-nice",
            help="Niceness added to each worker (0..19); default 10 with a model server "
            "(--client shared or triton: the server's executions run first), else 0.",
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option("--log-format", help="Logs on stderr: text or json (one per line)."),
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
        float | None,
        typer.Option("--server-probe-interval-s", help="Seconds between model server probes."),
    ] = None,
    server_probe_timeout_s: Annotated[
        float | None,
        typer.Option("--server-probe-timeout-s", help="Deadline of one server probe."),
    ] = None,
    server_probe_failures: Annotated[
        int | None,
        typer.Option(
            "--server-probe-failures",
            help="Failed probes in a row after which the model server is restarted.",
        ),
    ] = None,
    server_instances: Annotated[
        int | None,
        typer.Option(
            "--server-instances",
            help="Concurrent executions of each model in the model server, over the "
            "repository's [instances] count (`fleetinfer bench` reports the layout it measured).",
        ),
    ] = None,
    server_threads: Annotated[
        int | None,
        typer.Option(
            "--server-threads",
            help="ONNX Runtime intra-op threads of each execution, over the repository's.",
        ),
    ] = None,
    cloudwatch_namespace: Annotated[
        str | None,
        typer.Option(
            "--cloudwatch-namespace",
            help="Publish the queue's depths (QueueBacklog, …) to CloudWatch in this namespace "
            "(default: off).",
        ),
    ] = None,
    cloudwatch_region: Annotated[
        str | None,
        typer.Option(
            "--cloudwatch-region", help="Region of those metrics (default: AWS_REGION, profile)."
        ),
    ] = None,
    cloudwatch_endpoint_url: Annotated[
        str | None,
        typer.Option(
            "--cloudwatch-endpoint-url", help="CloudWatch endpoint (a VPC endpoint, a test server)."
        ),
    ] = None,
    cloudwatch_interval_s: Annotated[
        float | None,
        typer.Option(
            "--cloudwatch-interval-s",
            help="Seconds between publishes (default 60; under 60: high resolution).",
        ),
    ] = None,
    json_output: JsonOption = False,
    verbose: Annotated[
        bool | None,
        typer.Option("--verbose", "-v", help="Log every task.", show_default=False),
    ] = None,
) -> None:
    """Run the tasks of TARGET from the queue until SIGTERM (or an empty queue).

    Settings come from fleetinfer.toml (or --config FILE), then FLEETINFER_* variables, then
    these flags; `fleetinfer config show` prints the result. Exit code 0 after a clean drain;
    7 when the drain released tasks it was running (the grace ended, or a second signal cut it
    short): they run again, here or on another node; 8 with --exit-when-empty when a task of
    this run went to the dead-letter queue."""
    flags = {
        "target": target,
        "queue": queue,
        "results": results,
        "models": None if models is None else str(models),
        "client": client_mode,
        "triton_url": triton_url,
        "workers": workers,
        "grace_s": grace_s,
        "metrics_host": metrics_host,
        "metrics_port": metrics_port,
        "spot_endpoint": spot_endpoint,
        "spot_interval_s": spot_interval_s,
        "exit_when_empty": exit_when_empty,
        "allow_dead_letters": allow_dead_letters,
        "max_message_bytes": max_message_bytes,
        "restart_backoff_s": restart_backoff_s,
        "restart_backoff_max_s": restart_backoff_max_s,
        "preload": preload,
        "worker_nice": worker_nice,
        "log_format": log_format,
        "model_deadline_s": model_deadline_s,
        "server_probe_interval_s": server_probe_interval_s,
        "server_probe_timeout_s": server_probe_timeout_s,
        "server_probe_failures": server_probe_failures,
        "server_instances": server_instances,
        "server_threads": server_threads,
        "cloudwatch_namespace": cloudwatch_namespace,
        "cloudwatch_region": cloudwatch_region,
        "cloudwatch_endpoint_url": cloudwatch_endpoint_url,
        "cloudwatch_interval_s": cloudwatch_interval_s,
        "verbose": verbose,
    }
    configure_logging(bool(verbose))
    with exit_on_error():
        settings = load_settings(config_file, overrides=flags)
        configure_node_logging(verbose=settings.verbose, log_format=settings.log_format)
        add_working_directory_to_path()
        config = node_config(settings)
        with one_line_errors(config):
            report = run_node(config, on_ready=_ready_printer(json_output, config.log_format))
        _print_report(report, json_output, config.log_format)
    if not report.clean:
        raise typer.Exit(ExitCode.DRAIN_INCOMPLETE)
    if dead_lettered(report) and config.exit_when_empty and not config.allow_dead_letters:
        raise typer.Exit(ExitCode.DEAD_LETTERS)


def dead_lettered(report: NodeReport) -> int:
    """Tasks of this run that went to the dead-letter queue (dead, rejected, malformed)."""
    return sum(report.outcomes.get(k, 0) for k in ("dead", "rejected", "malformed"))


def _tell(text: str, log_format: str, **fields: Any) -> None:
    """The node's own line on stderr: text, or a JSON record with `--log-format json`."""
    if log_format == "json":
        announce_json(text, **fields)
    else:
        stderr.print(text, soft_wrap=True)


def _ready_printer(json_output: bool, log_format: str) -> Callable[[NodeStarted], None]:
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
        text = f"node {started.pid}: {plan.workers} workers ({_sizing_text(started)}){where}"
        _tell(text, log_format, metrics_url=started.metrics_url, workers=plan.workers)

    return ready


def _sizing_text(started: NodeStarted) -> str:
    plan = started.plan
    if plan.reason == "requested":
        return "--workers"
    pss_mib = (plan.worker_pss_bytes or 0) / 2**20
    return f"by cores {plan.by_cores}, by memory {plan.by_memory} at {pss_mib:.0f} MiB PSS each"


def _print_report(report: NodeReport, json_output: bool, log_format: str) -> None:
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
    text = (
        f"node stopped ({report.reason}) after {report.duration_s:.1f} s: {done}; "
        f"{report.restarts} restart(s), drain {report.drain_s:.1f} s"
        + ("" if report.clean else " (not clean: tasks were released unfinished)")
    )
    _tell(text, log_format, reason=report.reason, outcomes=report.outcomes)
