"""`roadchange` command line: generate data, train CDNet, evaluate the segment pipeline.

Thin: each command parses its options, calls one library function and returns a named exit code.
torch is imported only by `train` (the runtime needs onnxruntime and numpy only).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from roadchange.errors import RoadchangeError

app = typer.Typer(help="Road change detection on synthetic HD-map segments.", no_args_is_help=True)
err = Console(stderr=True, soft_wrap=True)  # soft wrap: a path in a message stays greppable


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    BAD_INPUT = 2
    SEGMENTS_FAILED = 3  # the evaluation finished, but some segment files could not be read


class Preset(StrEnum):
    default = "default"
    hard = "hard"


@contextmanager
def _progress(total: int, what: str, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not enabled,
        transient=True,
    ) as bar:
        task = bar.add_task(what, total=total)
        yield lambda done: bar.update(task, completed=done)


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
    return typer.Exit(ExitCode.BAD_INPUT)


@app.command()
def generate(
    preset: Annotated[Preset, typer.Option(help="world preset")] = Preset.default,
    segments: Annotated[int, typer.Option(min=1, help="number of segments")] = 100,
    seed: Annotated[int, typer.Option(help="dataset seed (evaluation: 424242 / 434343)")] = 424242,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("segments"),
) -> None:
    """Generate SEGMENTS segment files of PRESET into OUT."""
    from roadchange.generate import generate_dataset

    try:
        with _progress(segments, f"generating {preset.value}") as on_progress:
            paths = generate_dataset(
                out, preset=preset.value, segments=segments, seed=seed, on_progress=on_progress
            )
    except (RoadchangeError, OSError, ValueError) as exc:
        raise _fail(exc) from exc
    err.print(f"wrote {len(paths)} segments to {out}")


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="model repository root (writes OUT/VARIANT/...)")],
    preset: Annotated[
        list[Preset] | None, typer.Option(help="presets to train on (repeat)")
    ] = None,
    seed: Annotated[int, typer.Option(help="training seed, 1000..89999")] = 1000,
    variant: Annotated[str, typer.Option(help="cdnet, cdnet-l or cdnet-h")] = "cdnet",
    segments: Annotated[int, typer.Option(min=1, help="training segments per preset")] = 600,
    val_segments: Annotated[int, typer.Option(min=1, help="validation segments per preset")] = 100,
    steps: Annotated[int, typer.Option(min=0, help="optimizer steps")] = 3000,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    learning_rate: Annotated[float, typer.Option()] = 2e-3,
    widths: Annotated[str | None, typer.Option(help="stage widths, e.g. 8,16,32,64")] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads")] = 2,
    type_weights: Annotated[
        str | None, typer.Option(help="changed-loss weight per change type, 7 numbers")
    ] = None,
) -> None:
    """Train CDNet (both presets by default), calibrate it and write it to a model repository."""
    from roadchange.train import TrainConfig, write_model_repository
    from roadchange.train import train as run_training

    presets = tuple(p.value for p in preset) if preset else ("default", "hard")
    try:
        config = TrainConfig(
            variant=variant,
            seed=seed,
            presets=presets,
            segments_per_preset=segments,
            validation_segments_per_preset=val_segments,
            steps=steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            threads=threads,
            widths=tuple(int(w) for w in widths.split(",")) if widths else None,
        )
        if type_weights:
            config = replace(config, type_weights=_floats(type_weights))
        model, result = run_training(config, log=err.print)
        folder = write_model_repository(out, variant, model, result)
    except (RoadchangeError, ValueError, OSError) as exc:
        raise _fail(exc) from exc
    err.print(f"model written to {folder}")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None


def _model_file(model: Path | None) -> Path:
    """A model.onnx path from --model: a file, a model folder (newest version) or the shipped one."""
    from roadchange.pipeline import ModelLoadError, shipped_model_path

    if model is None:
        return shipped_model_path("cdnet")
    if model.is_dir():
        versions = sorted(int(p.name) for p in model.iterdir() if p.name.isdigit())
        if not versions:
            raise ModelLoadError(
                f"{model} is a folder without version folders: expected {model}/1/model.onnx"
            )
        return model / str(versions[-1]) / "model.onnx"
    return model


@app.command("eval")
def evaluate(
    data: Annotated[Path, typer.Option(help="folder of segment files")],
    model: Annotated[Path | None, typer.Option(help="model.onnx or a model folder")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    threads: Annotated[int, typer.Option(min=0, help="onnxruntime threads, 0 = all cores")] = 0,
) -> None:
    """Run the segment pipeline on every segment of DATA and print the metrics."""
    from roadchange.evaluate import evaluate_files, segment_files
    from roadchange.pipeline import OnnxModel

    try:
        files = segment_files(data)
        onnx_model = OnnxModel(_model_file(model), threads=threads)
        with _progress(len(files), "evaluating", enabled=not as_json) as on_progress:
            report = evaluate_files(files, onnx_model, on_progress=on_progress)
    except RoadchangeError as exc:
        raise _fail(exc) from exc
    for failure in report.failures:
        err.print(f"[yellow]failed:[/yellow] {escape(failure.error)}", soft_wrap=True)
    if as_json:
        typer.echo(json.dumps(report.to_json()))
    else:
        _print_report(report.to_json())
    if report.failed:
        raise typer.Exit(ExitCode.SEGMENTS_FAILED)


def _print_report(report: dict[str, object]) -> None:
    console = Console()
    for key in (
        "segments",
        "failed",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "macc",
        "remap_f1",
        "type_accuracy",
        "per_type_recall",
        "seconds",
    ):
        value = report[key]
        console.print(
            f"{key:>16}: {value:.4f}" if isinstance(value, float) else f"{key:>16}: {value}"
        )


def main() -> None:
    """Entry point of the `roadchange` script."""
    app()
