"""`fleetinfer deploy render kubernetes|ecs`: the fleet's objects from fleetinfer.toml and a profile.

fleetinfer deploy render kubernetes --config fleetinfer.toml [--profile BENCH.json] --out DIR
fleetinfer deploy render ecs --config fleetinfer.toml [--profile BENCH.json] --out DIR
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleetinfer.cli.common import exit_on_error, stdout
from fleetinfer.errors import ConfigError

deploy_app = typer.Typer(help="Render the fleet for Kubernetes (KEDA, Karpenter) or Amazon ECS.")


@deploy_app.command("render")
def render(
    target: Annotated[str, typer.Argument(help="kubernetes or ecs.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the files into.")],
    config: Annotated[
        Path, typer.Option("--config", help="fleetinfer.toml with its node and deploy tables.")
    ] = Path("fleetinfer.toml"),
    profile: Annotated[
        Path | None,
        typer.Option(
            "--profile", help="`fleetinfer bench --json` output (default: deploy.profile)."
        ),
    ] = None,
) -> None:
    """Render the deployment's files into --out (sizes from the profile, scaling from the
    backlog policy); a configuration that cannot be rendered is one error naming its keys."""
    from fleetinfer.deploy import TARGETS, load_deployment, render_files, write_files

    with exit_on_error():
        if target not in TARGETS:
            raise ConfigError(
                f"unknown deployment target {target!r}: expected one of {', '.join(TARGETS)}"
            )
        deployment = load_deployment(config, profile_path=profile)
        written = write_files(render_files(target, deployment), out)
        stdout.print(
            f"{target}: {len(written)} files in {out} ({deployment.workers} workers, "
            f"{deployment.memory_mib} MiB, backlog target "
            f"{deployment.policy.target_in_flight_per_node:g} per node, "
            f"{deployment.policy.floor_nodes}-{deployment.policy.ceiling_nodes} nodes)",
            soft_wrap=True,
        )
