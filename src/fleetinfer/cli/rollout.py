"""`fleetinfer rollout start|status|promote|abort|rollback|watch` (docs/rollout.md)."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Annotated

import msgspec
import typer

from fleetinfer.cli.common import JsonOption, exit_on_error, print_json, stderr, stdout
from fleetinfer.cli.registry import DEFAULT_REGISTRY, RegistryOption, open_registry
from fleetinfer.errors import RolloutError, TransientError

if TYPE_CHECKING:
    from fleetinfer.registry.rollout import Rollout

rollout_app = typer.Typer(
    help="Staged rollout of a model version with gates.", no_args_is_help=True
)


def parse_duration_s(text: str) -> float:
    match = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|m|h)?\s*", text)
    if match is None:
        raise RolloutError(f"duration {text!r} is not NUMBER[ms|s|m|h] (e.g. 10m, 30s)")
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]
    return float(match.group(1)) * unit


def _show(rollout: Rollout | None, json_output: bool) -> None:
    if json_output:
        print_json(msgspec.to_builtins(rollout))
        return
    if rollout is None:
        stdout.print("no rollout", markup=False)
        return
    stdout.print(
        f"{rollout.model} v{rollout.version} to {rollout.group!r}: {rollout.state}, "
        f"stage {rollout.stage + 1}/{len(rollout.stages)} on {rollout.stage_nodes}",
        markup=False,
    )
    for d in rollout.decisions:
        numbers = " ".join(f"{k}={v:.4g}" for k, v in d.numbers.items())
        stdout.print(f"  {d.at} {d.action}: {d.reason} {numbers}", markup=False)


@rollout_app.command("start")
def start(
    model: Annotated[str, typer.Argument()],
    version: Annotated[int, typer.Option("--version")],
    group: Annotated[str, typer.Option("--group", help="Selector: group=a, arch=x86_64, *")],
    canary: Annotated[float, typer.Option("--canary", help="Share of the group first.")] = 0.1,
    soak: Annotated[str, typer.Option("--soak", help="How long each stage soaks.")] = "10m",
    gate: Annotated[list[str] | None, typer.Option("--gate", help="e.g. error_rate<=0.01")] = None,
    registry: RegistryOption = DEFAULT_REGISTRY,
    json_output: JsonOption = False,
) -> None:
    """Pin the canary nodes of the group to the version; `watch` moves it on."""
    from fleetinfer.registry import rollout

    with exit_on_error():
        reg = open_registry(registry)
        started = rollout.start(
            reg,
            model,
            version,
            group=group,
            canary=canary,
            soak_s=parse_duration_s(soak),
            gates=gate or [],
        )
    _show(started, json_output)


@rollout_app.command("status")
def status(
    model: Annotated[str, typer.Argument()],
    registry: RegistryOption = DEFAULT_REGISTRY,
    json_output: JsonOption = False,
) -> None:
    """The rollout's state, stage and every decision with its numbers (one controller step)."""
    from fleetinfer.registry import rollout

    with exit_on_error():
        _show(rollout.advance(open_registry(registry), model), json_output)


@rollout_app.command("promote")
def promote(
    model: Annotated[str, typer.Argument()],
    registry: RegistryOption = DEFAULT_REGISTRY,
    json_output: JsonOption = False,
) -> None:
    """The next stage now, without waiting for the soak and the gates."""
    from fleetinfer.registry import rollout

    with exit_on_error():
        _show(rollout.promote(open_registry(registry), model), json_output)


@rollout_app.command("abort")
def abort(
    model: Annotated[str, typer.Argument()],
    registry: RegistryOption = DEFAULT_REGISTRY,
    json_output: JsonOption = False,
) -> None:
    """Stop the rollout: the group serves what it served before."""
    from fleetinfer.registry import rollout

    with exit_on_error():
        _show(rollout.abort(open_registry(registry), model), json_output)


@rollout_app.command("rollback")
def rollback(
    model: Annotated[str, typer.Argument()],
    registry: RegistryOption = DEFAULT_REGISTRY,
    json_output: JsonOption = False,
) -> None:
    """Restore the desired versions from before the last rollout (also after it promoted)."""
    from fleetinfer.registry import rollout

    with exit_on_error():
        _show(rollout.rollback(open_registry(registry), model), json_output)


@rollout_app.command("watch")
def watch(
    model: Annotated[str, typer.Argument()],
    interval: Annotated[float, typer.Option("--interval", help="Seconds between steps.")] = 5.0,
    evaluation: Annotated[
        str, typer.Option("--evaluation", help="Quality gate plugin.")
    ] = "roadchange",
    segments: Annotated[int, typer.Option("--segments", help="Quality gate set size.")] = 20,
    registry: RegistryOption = DEFAULT_REGISTRY,
    json_output: JsonOption = False,
) -> None:
    """The controller loop: step the rollout until it is promoted, rolled back or aborted."""
    from fleetinfer.registry import rollout
    from fleetinfer.registry.registry import Registry

    def quality(reg: Registry, name: str, version: int, baseline: int) -> tuple[float, float]:
        return rollout.plugin_quality(
            reg, name, version, baseline, plugin=evaluation, segments=segments
        )

    with exit_on_error():
        reg = open_registry(registry)
        while True:
            try:
                state = rollout.advance(reg, model, quality)
            except TransientError as exc:  # the registry is away: the rollout waits where it is
                stderr.print(f"registry unreachable, retrying: {exc}", markup=False)
                time.sleep(interval)
                continue
            if state is None or not state.active:
                break
            time.sleep(interval)
    _show(state, json_output)
