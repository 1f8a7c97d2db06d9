"""`fleetinfer registry push|list|show|nodes|desire`: the model registry (docs/rollout.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec
import typer

from fleetinfer.cli.common import JsonOption, exit_on_error, print_json, stdout

if TYPE_CHECKING:
    from fleetinfer.registry.registry import Registry

registry_app = typer.Typer(
    help="The model registry: versions, desired versions, nodes.", no_args_is_help=True
)

DEFAULT_REGISTRY = "file://.fleetinfer/registry"
RegistryOption = Annotated[
    str,
    typer.Option(
        "--registry",
        envvar="FLEETINFER_REGISTRY",
        help="file:///path or s3://bucket/prefix?endpoint_url=…",
    ),
]


def open_registry(url: str, *, create: bool = False) -> Registry:
    from fleetinfer.registry.registry import Registry

    if create and url.startswith("file://"):
        Path(url[len("file://") :]).mkdir(parents=True, exist_ok=True)
    return Registry.from_url(url)


@registry_app.command("push")
def push(
    model_path: Annotated[Path, typer.Argument(help="REPO/MODEL: a model repository entry.")],
    version: Annotated[int | None, typer.Option("--version", help="Default: the newest.")] = None,
    registry: RegistryOption = DEFAULT_REGISTRY,
    json_output: JsonOption = False,
) -> None:
    """Upload a compiled version with its manifest; versions are immutable."""
    with exit_on_error():
        reg = open_registry(registry, create=True)
        build = reg.push(model_path.parent, model_path.name, version)
    if json_output:
        print_json(msgspec.to_builtins(build))
        return
    stdout.print(
        f"pushed {build.model} v{build.version} ({build.target}, {build.precision}, "
        f"sha256 {build.sha256[:12]}…) to {reg.url}",
        markup=False,
    )


@registry_app.command("list")
def list_cmd(registry: RegistryOption = DEFAULT_REGISTRY, json_output: JsonOption = False) -> None:
    """Every model, its builds and its desired versions."""
    with exit_on_error():
        reg = open_registry(registry)
        found = {m: (reg.builds(m), reg.desired(m).rules) for m in reg.models()}
    if json_output:
        print_json(
            {
                m: {"builds": msgspec.to_builtins(b), "desired": msgspec.to_builtins(d)}
                for m, (b, d) in found.items()
            }
        )
        return
    for model, (builds, rules) in found.items():
        stdout.print(model, markup=False)
        for b in builds:
            stdout.print(
                f"  v{b.version} {b.target:<12} {b.precision:<5} {b.sha256[:12]}  "
                f"gate {b.accuracy_gate or '-'}  {b.pushed_at}",
                markup=False,
            )
        for r in rules:
            stdout.print(f"  desired: {r.selector} -> v{r.version}", markup=False)


@registry_app.command("show")
def show(
    model: Annotated[str, typer.Argument()],
    version: Annotated[int, typer.Argument()],
    registry: RegistryOption = DEFAULT_REGISTRY,
) -> None:
    """A version's builds with their manifests, as JSON."""
    with exit_on_error():
        reg = open_registry(registry)
        builds = reg.builds(model, version)
        shown = [
            {"build": msgspec.to_builtins(b), "manifest": msgspec.to_builtins(reg.manifest(b))}
            for b in builds
        ]
    print_json(shown)


@registry_app.command("nodes")
def nodes(registry: RegistryOption = DEFAULT_REGISTRY, json_output: JsonOption = False) -> None:
    """The nodes' status: attributes, served and wanted versions, errors, health."""
    with exit_on_error():
        reg = open_registry(registry)
        statuses = reg.statuses()
    if json_output:
        print_json(msgspec.to_builtins(statuses))
        return
    for s in statuses:
        stdout.print(
            f"{s.node}: served {s.served} wanted {s.wanted} errors {s.errors} "
            f"attributes {s.attributes}",
            markup=False,
        )


@registry_app.command("desire")
def desire(
    model: Annotated[str, typer.Argument()],
    version: Annotated[int, typer.Argument()],
    group: Annotated[str, typer.Option("--group", help="Selector, e.g. group=a or *.")] = "*",
    registry: RegistryOption = DEFAULT_REGISTRY,
) -> None:
    """Set the desired version of MODEL for a group directly (no rollout, no gates)."""
    from fleetinfer.registry.attributes import Selector
    from fleetinfer.registry.registry import Desired, Rule

    with exit_on_error():
        reg = open_registry(registry)
        Selector.parse(group)
        rules = [r for r in reg.desired(model).rules if r.selector != group]
        reg.set_desired(model, Desired([*rules, Rule(group, version)]))
    stdout.print(f"{model}: {group} -> v{version}", markup=False)
