"""`fleetinfer model init PATH/model.onnx --repo DIR`: a repository entry from an ONNX graph."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleetinfer.cli.common import JsonOption, exit_on_error, print_json, stdout
from fleetinfer.server.model_init import DEFAULT_MAX_BATCH_SIZE, init_model

model_app = typer.Typer(help="Model repository entries.", no_args_is_help=True)


@model_app.command("init")
def init(
    onnx_path: Annotated[Path, typer.Argument(help="The ONNX model file.")],
    repo: Annotated[Path, typer.Option("--repo", help="The model repository folder.")],
    name: Annotated[
        str | None,
        typer.Option("--name", help="Model name (default: the file's stem, or its folder's)."),
    ] = None,
    version: Annotated[int, typer.Option("--version", help="Version folder to write.")] = 1,
    max_batch_size: Annotated[
        int,
        typer.Option("--max-batch-size", help="Written when the graph has a dynamic batch axis."),
    ] = DEFAULT_MAX_BATCH_SIZE,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing entry.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Write REPO/NAME/config.toml and REPO/NAME/VERSION/model.onnx from the graph."""
    with exit_on_error():
        done = init_model(
            onnx_path, repo, name=name, version=version, max_batch_size=max_batch_size, force=force
        )
    if json_output:
        print_json(
            {
                "name": done.name,
                "config": str(done.config_path),
                "model": str(done.model_path),
                "max_batch_size": done.max_batch_size,
                "inputs": [[t.name, t.dtype, list(t.shape)] for t in done.inputs],
                "outputs": [[t.name, t.dtype, list(t.shape)] for t in done.outputs],
            }
        )
        return
    stdout.print(f"wrote {done.config_path} and {done.model_path}", markup=False)
    for kind, tensors in (("input", done.inputs), ("output", done.outputs)):
        for t in tensors:
            stdout.print(f"  {kind} {t.name}: {t.dtype} {list(t.shape)}", markup=False)
