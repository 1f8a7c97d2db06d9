"""The `fleetinfer` command: one typer app, one module per command group.

fleetinfer submit TASK [FILE|-] --queue URL
fleetinfer run APP:TASK --queue URL --results URL [--workers N] [--exit-when-empty] …
fleetinfer status --queue URL [--json]
fleetinfer config show [--config FILE] [--json]  (the node's effective configuration)
fleetinfer results get ID | export --format jsonl|csv|parquet   (read the results store)
fleetinfer model init PATH/model.onnx --repo DIR               (a repository entry from a graph)
fleetinfer dlq list|redrive --queue URL
fleetinfer serve --models REPO                 (the node's model server)
fleetinfer compile REPO/MODEL --target T --precision P
fleetinfer profile REPO/MODEL
fleetinfer demo                                (the main job on the embedded defaults)
fleetinfer bench APP:TASK --models REPO --payloads FILE   (serving modes side by side)
fleetinfer plan --profile BENCH.json --backlog N --deadline 6h   (instance mix; simulate, catalog)
fleetinfer deploy render kubernetes|ecs --config fleetinfer.toml --out DIR   (the fleet's objects)
fleetinfer registry push|list|show|nodes|desire   (the model registry: file:// or s3://)
fleetinfer rollout start|status|promote|abort|rollback|watch MODEL   (staged rollout with gates)
"""

from __future__ import annotations

import typer

from fleetinfer.cli.bench import bench
from fleetinfer.cli.compile import compile_cmd, profile_cmd
from fleetinfer.cli.config_cmd import config_app
from fleetinfer.cli.demo import demo
from fleetinfer.cli.deploy import deploy_app
from fleetinfer.cli.dlq import dlq_app
from fleetinfer.cli.model import model_app
from fleetinfer.cli.plan import catalog_app, plan, simulate
from fleetinfer.cli.registry import registry_app
from fleetinfer.cli.results import results_app
from fleetinfer.cli.rollout import rollout_app
from fleetinfer.cli.run import run
from fleetinfer.cli.serve import serve_command
from fleetinfer.cli.status import status
from fleetinfer.cli.submit import submit

app = typer.Typer(
    name="fleetinfer",
    help="Run model-heavy task pipelines across a fleet of machines at the lowest cost per task.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("submit")(submit)
app.command("run")(run)
app.command("status")(status)
app.add_typer(dlq_app, name="dlq")
app.add_typer(config_app, name="config")
app.add_typer(results_app, name="results")
app.add_typer(model_app, name="model")


app.command("serve")(serve_command)
app.command("compile")(compile_cmd)
app.command("profile")(profile_cmd)
app.command("demo")(demo)
app.command("bench")(bench)
app.command("plan")(plan)
app.command("simulate")(simulate)
app.add_typer(catalog_app, name="catalog")
app.add_typer(deploy_app, name="deploy")
app.add_typer(registry_app, name="registry")
app.add_typer(rollout_app, name="rollout")


def main() -> None:
    """Entry point of the `fleetinfer` script and of `python -m fleetinfer`."""
    app()
