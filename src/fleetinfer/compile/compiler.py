"""`compile_model`: build a new version of a model for a target and precision, gate and record it.

Steps: resolve and verify the FP32 source version; build the artifact in a hidden work folder next to
the versions (optimize / quantize / convert); compare it with the source on the evaluator; measure
both, interleaved, when the target runs here; write `manifest.json`; record `[versions.N] sha256` in
`config.toml`; move the folder into place as version N (the next free number).

Publishing: a compiled version is served only when asked (`publish=True`) and the accuracy gate
passes (or `force=True`). Without publishing, a `latest` or `all` version policy is pinned to the
versions served before (`policy = "specific"`), so the new folder does not change what is served;
with publishing, `latest` / `all` serve the new, highest version as they are, and a `specific`
policy gets N added. A refused publish still leaves version N on disk, unserved, and then raises
`AccuracyGateError` saying by how much the metric dropped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fleetinfer.compile.accuracy import (
    Comparison,
    Evaluator,
    GateVerdict,
    InputsEvaluator,
    compare_models,
    gate,
)
from fleetinfer.compile.calibration import (
    CalibrationSource,
    RandomSource,
    Tensors,
    collect,
    inputs_sha256,
)
from fleetinfer.compile.configfile import TomlValue, update_config
from fleetinfer.compile.manifest import (
    AccuracyInfo,
    LatencyInfo,
    Manifest,
    PerformanceInfo,
    QuantizationInfo,
    read_manifest,
    write_manifest,
)
from fleetinfer.compile.measure import (
    SessionModel,
    Timing,
    interleaved,
    open_session,
    timed_round,
    warm_up,
)
from fleetinfer.compile.passes import (
    QuantizationOptions,
    convert_fp16,
    int8_scheme,
    optimize_graph,
    preprocess,
    quantize_int8,
)
from fleetinfer.compile.targets import (
    Target,
    get_target,
    host_description,
    session_config_entries,
    unavailable_reason,
)
from fleetinfer.errors import AccuracyGateError, CalibrationError
from fleetinfer.server.repository import (
    CONFIG_FILE,
    MODEL_FILE,
    ModelConfig,
    ModelRepository,
    ModelVersion,
    file_sha256,
    verify_artifact,
)

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class BenchSettings:
    """How compile measures source and artifact: interleaved rounds at one batch size."""

    batch_size: int = 1
    intra_op_threads: int = 0
    rounds: int = 5
    duration_s: float = 0.5


@dataclass(frozen=True, slots=True)
class CompileRequest:
    repository: Path
    model: str
    target: str = "cpu"
    precision: str = "fp32"
    source_version: int | None = None
    quantization: QuantizationOptions = field(default_factory=QuantizationOptions)
    threshold: float = 0.01
    publish: bool = False
    force: bool = False
    measure: bool = True
    bench: BenchSettings = field(default_factory=BenchSettings)


@dataclass(frozen=True, slots=True)
class CompileResult:
    version: int
    folder: Path
    manifest: Manifest
    published: bool


def _quiet(_: str) -> None:
    return None


def compile_model(
    request: CompileRequest,
    *,
    calibration: CalibrationSource | None = None,
    evaluator: Evaluator | None = None,
    on_step: Progress = _quiet,
) -> CompileResult:
    """Build, evaluate, measure and record a new version (see the module docstring)."""
    target = get_target(request.target, request.precision)
    repository = ModelRepository(request.repository)
    source = source_version(repository, request.model, request.source_version)
    on_step(f"source: {request.model} version {source.version}")
    verify_artifact(source)
    folder = repository.root / request.model
    work = Path(tempfile.mkdtemp(prefix=".compile-", dir=folder))
    try:
        return _compile_in(work, request, target, source, calibration, evaluator, on_step)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def source_version(repository: ModelRepository, name: str, version: int | None) -> ModelVersion:
    """The FP32 source: the given version, or the newest served one; a compiled version is
    followed back to the source it was compiled from."""
    resolved = repository.resolve(name, version) if version is not None else None
    if resolved is None:
        resolved = repository.resolve(name)
    manifest = read_manifest(resolved.path.parent)
    if manifest is None:
        return resolved
    path = repository.root / name / str(manifest.source_version) / MODEL_FILE
    return ModelVersion(config=resolved.config, version=manifest.source_version, path=path)


def _compile_in(
    work: Path,
    request: CompileRequest,
    target: Target,
    source: ModelVersion,
    calibration_source: CalibrationSource | None,
    evaluator: Evaluator | None,
    on_step: Progress,
) -> CompileResult:
    config = source.config
    calibration = _calibration(request, config, calibration_source)
    on_step(f"build: {request.precision} for {target.name}")
    artifact = work / MODEL_FILE
    quantization = build_artifact(source.path, artifact, work, request, target, calibration)
    if calibration:
        described = getattr(calibration_source, "description", type(calibration_source).__name__)
        quantization = replace(quantization, calibration_source=str(described))
    session_config = session_config_entries(target, request.precision)
    evaluator = evaluator or InputsEvaluator(
        collect(RandomSource(config, count=16, seed=7), config, what="evaluation"),
        description="16 random standard-normal inputs (no evaluation set given): agreement with FP32",
    )
    on_step(f"accuracy: {evaluator.description}")
    comparison = _compare(source.path, artifact, session_config, evaluator)
    verdict = gate(comparison, evaluator.metric, request.threshold)
    performance = _performance(
        request, target, source.path, artifact, session_config, config, calibration, on_step
    )
    built = _Built(
        request,
        target,
        source,
        quantization,
        session_config,
        _accuracy_info(evaluator, comparison, verdict, request),
        performance,
        verdict,
    )
    return _commit(work, built)


def _calibration(
    request: CompileRequest, config: ModelConfig, source: CalibrationSource | None
) -> list[Tensors]:
    needs = request.precision == "int8" and request.quantization.mode == "static"
    if source is None:
        if needs:
            raise CalibrationError(
                "INT8 static quantization needs representative inputs: pass a calibration source "
                "(--calibration DIR_OF_NPZ or --calibration roadchange), or use --quantization dynamic"
            )
        return []
    return collect(source, config, what="calibration")


def build_artifact(
    source: Path,
    artifact: Path,
    work: Path,
    request: CompileRequest,
    target: Target,
    calibration: Sequence[Tensors],
) -> QuantizationInfo:
    """Write the artifact for `request.precision`; return what quantization did."""
    level = target.offline_optimization
    if request.precision == "fp16":
        convert_fp16(source, work / "fp16.onnx")
        optimize_graph(work / "fp16.onnx", artifact, level=level)
        return QuantizationInfo(mode="none")
    if request.precision != "int8":  # fp32 and bf16 (bf16 is a session setting on ARM)
        optimize_graph(source, artifact, level=level)
        return QuantizationInfo(mode="none")
    return _build_int8(source, artifact, work, request, target, calibration)


def _build_int8(
    source: Path,
    artifact: Path,
    work: Path,
    request: CompileRequest,
    target: Target,
    calibration: Sequence[Tensors],
) -> QuantizationInfo:
    options = request.quantization
    preprocess(source, work / "pre.onnx")
    scheme = int8_scheme(target, options, work / "pre.onnx")
    quantize_int8(
        work / "pre.onnx",
        work / "int8.onnx",
        scheme=scheme,
        options=options,
        calibration=calibration,
    )
    optimize_graph(work / "int8.onnx", artifact, level=target.offline_optimization)
    static = options.mode == "static"
    return QuantizationInfo(
        mode=options.mode,
        format="QDQ" if static else "QOperator (dynamic)",
        calibration_method=options.calibration_method if static else "",
        per_channel=options.per_channel,
        reduce_range=scheme.reduce_range,
        activation_type=scheme.activation_type if static else "QUInt8 (dynamic)",
        weight_type=scheme.weight_type,
        excluded_nodes=scheme.excluded_nodes,
        calibration_batches=len(calibration),
        calibration_sha256=inputs_sha256(calibration) if calibration else "",
    )


def _compare(
    source: Path, artifact: Path, session_config: dict[str, str], evaluator: Evaluator
) -> Comparison:
    reference = SessionModel(open_session(source))
    compiled = SessionModel(open_session(artifact, session_config=session_config))
    return compare_models(reference, compiled, evaluator)


def timing_inputs(config: ModelConfig, calibration: Sequence[Tensors], batch_size: int) -> Tensors:
    """One batch of `batch_size` for timing: calibration data tiled, or random inputs."""
    if not calibration:
        return next(iter(collect(RandomSource(config, batch=batch_size), config, what="timing")))
    first = calibration[0]
    return {
        name: np.ascontiguousarray(np.resize(a, (batch_size, *a.shape[1:])))
        for name, a in first.items()
    }


def _performance(
    request: CompileRequest,
    target: Target,
    source: Path,
    artifact: Path,
    session_config: dict[str, str],
    config: ModelConfig,
    calibration: Sequence[Tensors],
    on_step: Progress,
) -> PerformanceInfo:
    reason = unavailable_reason(target) or ("" if request.measure else "skipped (--no-measure)")
    if reason:
        on_step(f"performance: unmeasured: {reason}")
        return PerformanceInfo(measured=False, reason=reason)
    bench = request.bench
    on_step(f"performance: {bench.rounds} interleaved rounds at batch {bench.batch_size}")
    timings = measure_pair(
        source,
        artifact,
        session_config,
        timing_inputs(config, calibration, bench.batch_size),
        bench,
    )
    before, after = timings["source"], timings["compiled"]
    return PerformanceInfo(
        measured=True,
        host=host_description(),
        provider="CPUExecutionProvider",
        batch_size=bench.batch_size,
        intra_op_threads=bench.intra_op_threads,
        rounds=bench.rounds,
        source=_latency(before),
        compiled=_latency(after),
        speedup=round(after.samples_per_s / before.samples_per_s, 4),
    )


def measure_pair(
    source: Path,
    artifact: Path,
    session_config: dict[str, str],
    inputs: Tensors,
    bench: BenchSettings,
) -> dict[str, Timing]:
    """Source and artifact timed in interleaved rounds (source first in every round)."""
    threads = bench.intra_op_threads
    sessions = {
        "source": open_session(source, intra_op_threads=threads),
        "compiled": open_session(artifact, intra_op_threads=threads, session_config=session_config),
    }
    warm_up(list(sessions.values()), inputs)
    return interleaved(
        {
            name: functools.partial(timed_round, [session], inputs, bench.duration_s)
            for name, session in sessions.items()
        },
        rounds=bench.rounds,
    )


def _latency(timing: Timing) -> LatencyInfo:
    return LatencyInfo(
        samples_per_s=round(timing.samples_per_s, 3),
        p50_latency_ms=round(timing.p50_latency_ms, 4),
        p99_latency_ms=round(timing.p99_latency_ms, 4),
        cpu_samples_per_s=round(timing.cpu_samples_per_s, 3),
    )


def _accuracy_info(
    evaluator: Evaluator, comparison: Comparison, verdict: GateVerdict, request: CompileRequest
) -> AccuracyInfo:
    state = "passed" if verdict.passed else ("forced" if request.force else "failed")
    return AccuracyInfo(
        evaluation=evaluator.description,
        metric=verdict.metric,
        threshold=request.threshold,
        source={k: round(v, 6) for k, v in comparison.source.items()},
        compiled={k: round(v, 6) for k, v in comparison.compiled.items()},
        drop=round(verdict.drop, 6),
        max_abs_diff={k: float(f"{v:.6g}") for k, v in comparison.max_abs_diff.items()},
        gate=state,
        evaluated_on=f"CPUExecutionProvider on {host_description()}",
    )


def tool_versions() -> dict[str, str]:
    import fleetinfer

    versions = {
        "fleetinfer": fleetinfer.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    try:
        import onnx

        versions["onnx"] = onnx.__version__
    except ModuleNotFoundError:
        versions["onnx"] = "not installed"
    return versions


def next_version(folder: Path) -> int:
    """One above every numbered folder, servable or not."""
    numbers = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(numbers, default=0) + 1


def policy_update(
    config: ModelConfig, served: list[int], new: int, publish: bool
) -> dict[str, TomlValue] | None:
    """The `[version_policy]` values that make `new` served (publish) or not (see module doc)."""
    policy = config.version_policy
    if publish:
        if policy.policy != "specific":
            return None
        return {"policy": "specific", "versions": sorted({*policy.versions, new})}
    if policy.policy == "specific":
        return None
    return {"policy": "specific", "versions": served}


@dataclass(frozen=True, slots=True)
class _Built:
    """Everything known about a built artifact before it gets its version number."""

    request: CompileRequest
    target: Target
    source: ModelVersion
    quantization: QuantizationInfo
    session_config: dict[str, str]
    accuracy: AccuracyInfo
    performance: PerformanceInfo
    verdict: GateVerdict


def _commit(work: Path, built: _Built) -> CompileResult:
    request, verdict = built.request, built.verdict
    repository = ModelRepository(request.repository)
    folder = repository.root / request.model
    with _model_lock(folder):  # two compiles of one model must not take the same number
        version = next_version(folder)
        publish = request.publish and (verdict.passed or request.force)
        manifest = _manifest(built, work, version, publish)
        _install(work, folder, version, manifest, repository, publish)
    if request.publish and not publish:
        raise AccuracyGateError(
            model=request.model,
            version=version,
            metric=verdict.metric,
            source=verdict.source,
            compiled=verdict.compiled,
            threshold=verdict.threshold,
        )
    return CompileResult(
        version=version, folder=folder / str(version), manifest=manifest, published=publish
    )


@contextlib.contextmanager
def _model_lock(folder: Path) -> Iterator[None]:
    with (folder / ".compile.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _manifest(built: _Built, work: Path, version: int, publish: bool) -> Manifest:
    return Manifest(
        model=built.request.model,
        version=version,
        source_version=built.source.version,
        source_sha256=file_sha256(built.source.path),
        artifact_sha256=file_sha256(work / MODEL_FILE),
        target=built.target.name,
        precision=built.request.precision,
        quantization=built.quantization,
        offline_optimization=built.target.offline_optimization,
        session_config=built.session_config,
        accuracy=built.accuracy,
        performance=built.performance,
        tools=tool_versions(),
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        published=publish,
    )


def _install(
    work: Path,
    folder: Path,
    version: int,
    manifest: Manifest,
    repository: ModelRepository,
    publish: bool,
) -> None:
    """Record the hash (and the policy) first, then move the folder into place: a server that
    re-reads the repository in between sees either nothing new or the finished version."""
    for scratch in work.iterdir():
        if scratch.name != MODEL_FILE:
            shutil.rmtree(scratch) if scratch.is_dir() else scratch.unlink()
    write_manifest(work, manifest)
    config = repository.config(manifest.model)
    updates: dict[str, dict[str, TomlValue]] = {
        f"versions.{version}": {"sha256": manifest.artifact_sha256}
    }
    policy = policy_update(config, repository.versions(manifest.model), version, publish)
    if policy is not None:
        updates["version_policy"] = policy
    update_config(folder / CONFIG_FILE, updates)
    work.chmod(0o755)
    os.rename(work, folder / str(version))
