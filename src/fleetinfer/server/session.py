"""ONNX Runtime sessions for model versions, with request validation against the model config.

Used in-process by the `inprocess` client (the isolated baseline) and by the shared model server.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from fleetinfer.errors import (
    ArtifactLoadError,
    InferenceError,
    IntegrityError,
    InvalidInputError,
    ModelConfigError,
)
from fleetinfer.server.repository import (
    ModelConfig,
    ModelVersion,
    RuntimeConfig,
    file_sha256,
    verify_artifact,
)
from fleetinfer.server.schema import manifest_problems

_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

Tensors = dict[str, np.ndarray[Any, Any]]


MANIFEST_FILE = "manifest.json"  # written by `fleetinfer compile` beside a compiled version


def compiled_session_config(artifact: Path) -> dict[str, str]:
    """The ONNX Runtime session entries a compiled version must be loaded with (its manifest's
    `session_config`, e.g. ARM BF16 fast math); {} for a version that was not compiled. Read
    here, without the compile extra, as the runtime needs only this field; the manifest is
    checked first (`schema.manifest_problems`), and the artifact against its `artifact_sha256`."""
    path = artifact.parent / MANIFEST_FILE
    if not path.is_file():
        return {}
    try:
        table = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, nested too deep
        raise ModelConfigError(f"{path}: not a valid compile manifest: {exc}") from exc
    found = manifest_problems(table)
    if found:
        raise ModelConfigError(f"{path}: " + "; ".join(found))
    recorded = table.get("artifact_sha256")
    if recorded is not None and file_sha256(artifact) != recorded.lower():
        raise IntegrityError(
            f"{artifact}: sha256 is {file_sha256(artifact)}, but {path} records {recorded}: the "
            "artifact or its manifest was modified; restore them or compile the version again"
        )
    entries: dict[str, str] = table.get("session_config", {})
    return entries


def session_options(
    runtime: RuntimeConfig,
    *,
    intra_op_threads: int | None = None,
    config_entries: Mapping[str, str] | None = None,
) -> Any:
    options = ort.SessionOptions()
    for key, value in (config_entries or {}).items():
        options.add_session_config_entry(key, value)
    options.intra_op_num_threads = (
        runtime.intra_op_threads if intra_op_threads is None else intra_op_threads
    )
    options.inter_op_num_threads = runtime.inter_op_threads
    options.graph_optimization_level = _OPTIMIZATION[runtime.graph_optimization_level]
    options.enable_cpu_mem_arena = runtime.memory_arena
    return options


def usable_providers(requested: tuple[str, ...]) -> list[str]:
    """The requested execution providers this onnxruntime build has, in order; CPU as the floor."""
    available = set(ort.get_available_providers())
    providers = [p for p in requested if p in available]
    if "CPUExecutionProvider" not in providers:
        providers.append("CPUExecutionProvider")
    return providers


def validate_inputs(config: ModelConfig, inputs: Mapping[str, Any]) -> Tensors:
    """Check names, dtypes, shapes and batch size against the config; return contiguous arrays."""
    expected = {spec.name for spec in config.inputs}
    if set(inputs) != expected:
        raise InvalidInputError(
            f"model {config.name!r} takes inputs {sorted(expected)}, got {sorted(inputs)}"
        )
    checked: Tensors = {}
    for spec in config.inputs:
        array = inputs[spec.name]
        if not isinstance(array, np.ndarray):
            raise InvalidInputError(
                f"input {spec.name!r} of {config.name!r} must be a numpy array, got {type(array).__name__}"
            )
        if array.dtype != spec.numpy_dtype:
            raise InvalidInputError(
                f"input {spec.name!r} of {config.name!r} must be {spec.dtype}, got {array.dtype}: "
                f"convert with .astype(np.{spec.dtype})"
            )
        _check_shape(config, spec.name, spec.shape, array.shape)
        checked[spec.name] = np.ascontiguousarray(array)
    return checked


def _check_shape(
    config: ModelConfig, name: str, expected: tuple[int, ...], got: tuple[int, ...]
) -> None:
    fits = len(expected) == len(got) and all(
        e in (-1, g) for e, g in zip(expected, got, strict=True)
    )
    if not fits:
        raise InvalidInputError(
            f"input {name!r} of {config.name!r} must have shape {list(expected)} (-1 = any), got {list(got)}"
        )
    if expected[0] == -1 and got[0] > config.max_batch_size:
        raise InvalidInputError(
            f"input {name!r} of {config.name!r} has batch {got[0]}, above max_batch_size "
            f"{config.max_batch_size}: split the request"
        )
    if expected[0] == -1 and got[0] == 0:
        raise InvalidInputError(f"input {name!r} of {config.name!r} has an empty batch")


def even_cuts(total: int, parts: int) -> list[int]:
    """Bounds of `parts` slices of `total` samples whose sizes differ by one at most (25 in 4:
    7, 6, 6, 6, so two instances share them 13 / 12, where slices of 8 would split 16 / 9)."""
    return [-(-total * k // parts) for k in range(parts + 1)]


def even_slices(inputs: Tensors, limit: int) -> list[Tensors]:
    """`inputs` cut along the batch axis into the fewest slices of at most `limit` samples,
    of even sizes."""
    total = next(iter(inputs.values())).shape[0]
    bounds = even_cuts(total, math.ceil(total / limit))
    return [{n: a[i:j] for n, a in inputs.items()} for i, j in itertools.pairwise(bounds)]


def joined(parts: list[Tensors]) -> Tensors:
    """The outputs of slices, back in one batch."""
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _open_session(model: ModelVersion, options: Any, providers: list[str]) -> Any:
    """An ONNX Runtime session on the version's artifact; a file it refuses (corrupt,
    truncated, external data outside the model's folder) becomes `ArtifactLoadError`."""
    try:
        return ort.InferenceSession(str(model.path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own unexported exception types
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
        raise ArtifactLoadError(
            f"{model.path}: ONNX Runtime cannot load model {model.name!r} version "
            f"{model.version}: {reason}; replace the file (record its sha256 in config.toml "
            "to catch a corrupted copy before it is loaded)"
        ) from exc


class OrtModel:
    """One loaded model version: its artifact verified, an ONNX Runtime session, validation."""

    def __init__(self, model: ModelVersion, *, intra_op_threads: int | None = None) -> None:
        verify_artifact(model)
        self.model = model
        self.config = model.config
        self.providers = usable_providers(model.config.runtime.execution_providers)
        self.session_config = compiled_session_config(model.path)
        options = session_options(
            model.config.runtime,
            intra_op_threads=intra_op_threads,
            config_entries=self.session_config,
        )
        self.session = _open_session(model, options, self.providers)
        self.output_names = [spec.name for spec in model.config.outputs]
        specs = model.config.inputs + model.config.outputs
        self.batchable = all(s.shape[0] == -1 for s in specs)  # every tensor has a batch axis
        preferred = model.config.batching.preferred_batch_sizes
        # the most samples run at once (the largest preferred batch size: it caps the activation
        # memory ONNX Runtime keeps); None when there is no batch axis to slice or no preference
        self.slice_limit = max(preferred) if preferred and self.batchable else None

    def infer(self, inputs: Mapping[str, Any]) -> Tensors:
        """Validate and run; a batch above `slice_limit` runs as even slices, one after the
        other, as the model server runs it (the same outputs, the same activation memory)."""
        checked = validate_inputs(self.config, inputs)
        limit = self.slice_limit
        if limit is None or next(iter(checked.values())).shape[0] <= limit:
            return self.run(checked)
        return joined([self.run(part) for part in even_slices(checked, limit)])

    def run(self, inputs: Tensors) -> Tensors:
        """Run already-validated inputs; runtime failures become `InferenceError`."""
        try:
            outputs = self.session.run(self.output_names, inputs)
        except Exception as exc:  # onnxruntime raises its own unexported exception types
            raise InferenceError(
                f"model {self.config.name!r} version {self.model.version} failed: {exc}"
            ) from exc
        return dict(zip(self.output_names, outputs, strict=True))
