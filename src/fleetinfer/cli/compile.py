"""`fleetinfer compile REPO/MODEL` and `fleetinfer profile REPO/MODEL` (see docs/compile.md).

Register in the app: `app.command("compile")(compile_cmd)` and `app.command("profile")(profile_cmd)`.
Exit codes: those of `fleetinfer.cli.common.ExitCode`, including `ExitCode.GATE` (6) when the accuracy gate
failed (with `--publish`: the version was written but not published).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fleetinfer.cli.common import (
    ExitCode,
    JsonOption,
    exit_on_error,
    print_json,
    stderr,
    stdout,
)
from fleetinfer.compile.accuracy import Evaluator, InputsEvaluator
from fleetinfer.compile.calibration import CalibrationSource, NpzSource, ZeroSource, collect
from fleetinfer.compile.compiler import BenchSettings, CompileRequest, CompileResult, compile_model
from fleetinfer.compile.passes import QuantizationOptions
from fleetinfer.compile.plugins import load_plugin
from fleetinfer.compile.profile import (
    Constraints,
    ProfileReport,
    ProfileSpace,
    profile_model,
    write_profile,
)
from fleetinfer.compile.targets import PRECISIONS, TARGETS
from fleetinfer.errors import AccuracyGateError, ConfigError, ModelConfigError
from fleetinfer.server.repository import ModelRepository

ZEROS = "zeros"

ModelArgument = Annotated[
    Path, typer.Argument(help="REPO/MODEL: the model's folder inside a model repository.")
]


def split_model_path(path: Path) -> tuple[Path, str]:
    """`models/cdnet` -> (`models`, `cdnet`), checked to be a model folder with a config."""
    if not (path / "config.toml").is_file():
        raise ModelConfigError(
            f"{path} is not a model folder: expected {path / 'config.toml'} "
            "(pass REPO/MODEL, for example models/cdnet)"
        )
    resolved = path.resolve()
    return resolved.parent, resolved.name


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from exc
    if not values:
        raise ConfigError(f"{what} must name at least one integer, got {text!r}")
    return values


def calibration_source(
    spec: str | None, repository: Path, model: str, segments: int
) -> CalibrationSource | None:
    """A task plugin's name (`roadchange`), `zeros` (a deliberately bad calibration) or a path
    to .npz input dicts."""
    if spec is None:
        return None
    plugin = load_plugin(spec)
    if plugin is not None:
        return plugin.calibration(segments=segments)
    if spec == ZEROS:
        return ZeroSource(ModelRepository(repository).config(model))
    return NpzSource(Path(spec))


def evaluator_for(
    spec: str | None, repository: Path, model: str, segments: int, seed: int
) -> Evaluator | None:
    """A task plugin's name (`roadchange`: segment pipeline, macc), a path to .npz inputs
    (agreement), or None."""
    if spec is None:
        return None
    plugin = load_plugin(spec)
    if plugin is not None:
        return plugin.evaluator(segments=segments, seed=seed)
    config = ModelRepository(repository).config(model)
    inputs = collect(NpzSource(Path(spec)), config, what="evaluation")
    return InputsEvaluator(
        inputs, description=f"{len(inputs)} inputs from {spec}: agreement with FP32"
    )


@contextlib.contextmanager
def _quiet_stdout(enabled: bool) -> Iterator[None]:
    """onnxruntime's calibrators print to stdout; keep it clean for --json."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def compile_cmd(
    model_path: ModelArgument,
    target: Annotated[str, typer.Option(help=f"One of {', '.join(TARGETS)}.")] = "cpu",
    precision: Annotated[str, typer.Option(help=f"One of {', '.join(PRECISIONS)}.")] = "fp32",
    calibration: Annotated[
        str | None,
        typer.Option(
            help="INT8 calibration inputs: a .npz file or folder of them, 'roadchange', or 'zeros' (deliberately bad)."
        ),
    ] = None,
    calibration_segments: Annotated[
        int, typer.Option(help="Segments for --calibration roadchange.")
    ] = 8,
    calibration_method: Annotated[
        str, typer.Option(help="minmax, entropy or percentile.")
    ] = "minmax",
    quantization: Annotated[
        str, typer.Option(help="INT8 mode: static (calibrated QDQ) or dynamic.")
    ] = "static",
    per_channel: Annotated[bool, typer.Option(help="Per-channel weight scales.")] = True,
    exclude_nodes: Annotated[
        str, typer.Option(help="Comma-separated node names kept in float.")
    ] = "",
    exclude_heads: Annotated[bool, typer.Option(help="Keep the output layers in float.")] = False,
    evaluation: Annotated[
        str | None,
        typer.Option(
            help="Accuracy evaluation: 'roadchange' (macc) or .npz inputs (agreement); default: random inputs."
        ),
    ] = None,
    eval_segments: Annotated[int, typer.Option(help="Segments for --evaluation roadchange.")] = 200,
    eval_seed: Annotated[
        int, typer.Option(help="Seed of the roadchange evaluation split.")
    ] = 424242,
    threshold: Annotated[
        float, typer.Option(help="Largest allowed drop of the gated metric.")
    ] = 0.01,
    publish: Annotated[
        bool, typer.Option(help="Serve the new version if the gate passes.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Publish even if the gate fails.")] = False,
    source_version: Annotated[
        int | None, typer.Option(help="FP32 source version (default: served).")
    ] = None,
    measure: Annotated[bool, typer.Option(help="Measure throughput and latency here.")] = True,
    bench_batch: Annotated[int, typer.Option(help="Batch size of the measurement.")] = 1,
    bench_rounds: Annotated[int, typer.Option(help="Interleaved measurement rounds.")] = 5,
    bench_seconds: Annotated[float, typer.Option(help="Seconds per variant per round.")] = 0.5,
    threads: Annotated[
        int, typer.Option(help="Intra-op threads when measuring (0 = default).")
    ] = 0,
    json_output: JsonOption = False,
) -> None:
    """Build a new version of a model for a target and precision, with its manifest."""
    with exit_on_error():
        repository, model = split_model_path(model_path)
        request = CompileRequest(
            repository=repository,
            model=model,
            target=target,
            precision=precision,
            source_version=source_version,
            quantization=QuantizationOptions(
                mode=quantization,
                calibration_method=calibration_method,
                per_channel=per_channel,
                exclude_nodes=tuple(n for n in exclude_nodes.split(",") if n),
                exclude_heads=exclude_heads,
            ),
            threshold=threshold,
            publish=publish,
            force=force,
            measure=measure,
            bench=BenchSettings(
                batch_size=bench_batch,
                intra_op_threads=threads,
                rounds=bench_rounds,
                duration_s=bench_seconds,
            ),
        )
        source = calibration_source(calibration, repository, model, calibration_segments)
        evaluator = evaluator_for(evaluation, repository, model, eval_segments, eval_seed)
        _run_compile(request, source, evaluator, json_output)


def _run_compile(
    request: CompileRequest,
    source: CalibrationSource | None,
    evaluator: Evaluator | None,
    json_output: bool,
) -> None:
    def step(text: str) -> None:
        stderr.print(f"[dim]compile[/] {text}", markup=True)

    try:
        with _quiet_stdout(json_output):
            result = compile_model(request, calibration=source, evaluator=evaluator, on_step=step)
    except AccuracyGateError as exc:
        stderr.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
        raise typer.Exit(ExitCode.GATE) from None
    _report_compile(result, json_output)
    if result.manifest.accuracy.gate == "failed":
        raise typer.Exit(ExitCode.GATE)


def _report_compile(result: CompileResult, json_output: bool) -> None:
    manifest = result.manifest
    if json_output:
        print_json(
            {
                "version": result.version,
                "folder": str(result.folder),
                "published": result.published,
                "manifest": _manifest_json(result),
            }
        )
        return
    accuracy, perf = manifest.accuracy, manifest.performance
    stdout.print(
        f"{manifest.model} version {result.version}: {manifest.precision} for {manifest.target} "
        f"from version {manifest.source_version} ({'published' if result.published else 'not published'})"
    )
    stdout.print(
        f"accuracy: {accuracy.metric} {accuracy.source.get(accuracy.metric, 0):.4f} -> "
        f"{accuracy.compiled.get(accuracy.metric, 0):.4f} (drop {accuracy.drop:.4f}, "
        f"allowed {accuracy.threshold:.4f}): gate {accuracy.gate}; max |diff| {accuracy.max_abs_diff}"
    )
    if perf.measured and perf.source and perf.compiled:
        stdout.print(
            f"throughput at batch {perf.batch_size}: {perf.source.samples_per_s:.1f} -> "
            f"{perf.compiled.samples_per_s:.1f} samples/s ({perf.speedup:.2f}x), p99 "
            f"{perf.source.p99_latency_ms:.2f} -> {perf.compiled.p99_latency_ms:.2f} ms on {perf.host}"
        )
    else:
        stdout.print(f"performance: unmeasured: {perf.reason}")
    stdout.print(f"manifest: {result.folder / 'manifest.json'}")


def _manifest_json(result: CompileResult) -> object:
    import json

    return json.loads(result.manifest.encode())


def profile_cmd(
    model_path: ModelArgument,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,4,8",
    threads: Annotated[
        str, typer.Option(help="Comma-separated intra-op threads (0 = default).")
    ] = "0,1,2",
    instances: Annotated[str, typer.Option(help="Comma-separated instance counts.")] = "1",
    versions: Annotated[
        str, typer.Option(help="Comma-separated versions (default: all on disk).")
    ] = "",
    rounds: Annotated[int, typer.Option(help="Interleaved rounds.")] = 3,
    seconds: Annotated[float, typer.Option(help="Seconds per configuration per round.")] = 0.3,
    max_p99_ms: Annotated[float | None, typer.Option(help="Constraint: p99 latency in ms.")] = None,
    max_memory_mb: Annotated[
        float | None, typer.Option(help="Constraint: memory (PSS) in MB.")
    ] = None,
    memory: Annotated[
        bool, typer.Option(help="Measure memory (one process per configuration).")
    ] = True,
    write: Annotated[
        bool, typer.Option(help="Write the best configuration into config.toml.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Sweep batch size x threads x precision x instances; pick (and write) the best."""
    with exit_on_error():
        repository, model = split_model_path(model_path)
        space = ProfileSpace(
            batch_sizes=_ints(batch_sizes, "--batch-sizes"),
            intra_op_threads=_ints(threads, "--threads"),
            instances=_ints(instances, "--instances"),
            versions=_ints(versions, "--versions") if versions else (),
            rounds=rounds,
            duration_s=seconds,
            measure_memory=memory,
        )
        constraints = Constraints(max_p99_ms=max_p99_ms, max_memory_mb=max_memory_mb)
        report = profile_model(
            repository,
            model,
            space,
            constraints,
            on_step=lambda text: stderr.print(f"[dim]profile[/] {text}", markup=True),
        )
        written = write_profile(repository, model, report.best) if write else None
        if json_output:
            print_json({**report.to_json(), "written": written})
        else:
            _print_profile(report, written)


def _print_profile(report: ProfileReport, written: object) -> None:
    table = Table(title=f"{report.model} on {report.host}")
    headers = (
        "ver",
        "precision",
        "batch",
        "threads",
        "inst",
        "samples/s",
        "p50 ms",
        "p99 ms",
        "PSS MB",
        "note",
    )
    for column in headers:
        table.add_column(
            column,
            justify="left" if column in ("precision", "note") else "right",
            no_wrap=column != "note",
        )
    for row in sorted(report.rows, key=lambda r: -r.samples_per_s):
        mark = " *" if row == report.best else (" (default)" if row == report.default else "")
        table.add_row(
            str(row.version),
            row.precision,
            str(row.batch_size),
            str(row.intra_op_threads),
            str(row.instances),
            f"{row.samples_per_s:.1f}",
            f"{row.p50_latency_ms:.2f}",
            f"{row.p99_latency_ms:.2f}",
            "-" if row.memory_mb is None else f"{row.memory_mb:.1f}",
            (row.note + mark).strip(),
        )
    stdout.print(table)
    ratio = report.best.samples_per_s / report.default.samples_per_s
    stdout.print(
        f"best (*): {ratio:.2f}x the ONNX Runtime default configuration (batch 1, default threads)"
    )
    if written:
        stdout.print(f"written to config.toml: {written}")
