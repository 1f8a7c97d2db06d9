"""Triton-like model repository: `<repo>/<model>/config.toml` and `<repo>/<model>/<version>/model.onnx`.

A config names its inputs and outputs (name, dtype, full shape with -1 for a dynamic dimension,
batch first), the maximum batch size, batching, instance count, runtime options and the version
policy. A missing or inconsistent config raises `ModelConfigError` naming the file and the field.
Each version may record the sha256 of its artifact (`[versions.N] sha256 = "…"`); a recorded hash
that does not match the file raises `IntegrityError` before the model is loaded.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fleetinfer.errors import IntegrityError, ModelConfigError, UnknownModelError
from fleetinfer.server.schema import DTYPE_NAMES, config_problems, is_version_number

CONFIG_FILE = "config.toml"
MODEL_FILE = "model.onnx"
DTYPES: Mapping[str, type[np.generic]] = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "int64": np.int64,
    "int32": np.int32,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}
assert sorted(DTYPES) == sorted(DTYPE_NAMES)  # the schema checks names, this maps them
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output: a name, a dtype name from `DTYPES` and a shape (-1 = dynamic)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return np.dtype(DTYPES[self.dtype])


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    graph_optimization_level: str = "all"
    memory_arena: bool = True


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    policy: str = "latest"
    versions: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """A parsed, validated `config.toml`."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: BatchingConfig = BatchingConfig()
    instance_count: int = 1
    runtime: RuntimeConfig = RuntimeConfig()
    version_policy: VersionPolicy = VersionPolicy()
    sha256: Mapping[int, str] = field(default_factory=dict)

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One loadable version of a model: its config, number and artifact path."""

    config: ModelConfig
    version: int
    path: Path

    @property
    def name(self) -> str:
        return self.config.name


def parse_config(path: Path, *, expected_name: str | None = None) -> ModelConfig:
    """Read and validate one `config.toml`: every mistake is reported at once (`schema.py`)."""
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelConfigError(
            f"{path}: missing model config; every model folder needs one"
        ) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ModelConfigError(f"{path}: not valid TOML: {exc}") from exc
    found = config_problems(table)
    name = table.get("name")
    if expected_name is not None and isinstance(name, str) and name != expected_name:
        found.insert(0, f"field `name` must be the folder name {expected_name!r}, got {name!r}")
    if found:
        raise ModelConfigError(f"{path}: " + "; ".join(found))
    return _model_config(table)


def _model_config(table: dict[str, Any]) -> ModelConfig:
    """The `ModelConfig` of a table `config_problems` found valid."""
    batching, runtime = table.get("batching", {}), table.get("runtime", {})
    policy = table.get("version_policy", {})
    return ModelConfig(
        name=table["name"],
        max_batch_size=table["max_batch_size"],
        inputs=_tensor_specs(table["inputs"]),
        outputs=_tensor_specs(table["outputs"]),
        batching=BatchingConfig(
            max_queue_delay_us=batching.get("max_queue_delay_us", 0),
            preferred_batch_sizes=tuple(batching.get("preferred_batch_sizes", ())),
        ),
        instance_count=table.get("instances", {}).get("count", 1),
        runtime=RuntimeConfig(
            execution_providers=tuple(
                runtime.get("execution_providers", ("CPUExecutionProvider",))
            ),
            intra_op_threads=runtime.get("intra_op_threads", 0),
            inter_op_threads=runtime.get("inter_op_threads", 1),
            graph_optimization_level=runtime.get("graph_optimization_level", "all"),
            memory_arena=runtime.get("memory_arena", True),
        ),
        version_policy=VersionPolicy(
            policy=policy.get("policy", "latest"), versions=tuple(policy.get("versions", ()))
        ),
        sha256={int(k): v["sha256"].lower() for k, v in table.get("versions", {}).items()},
    )


def _tensor_specs(entries: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(name=e["name"], dtype=e["dtype"], shape=tuple(e["shape"])) for e in entries
    )


def checked_model_name(name: str) -> str:
    """`name` if it is a plain model name (a folder right inside the repository): no path
    separator, no `..`, not absolute; `UnknownModelError` otherwise."""
    if MODEL_NAME.fullmatch(name) is None or name.strip(".") == "":
        raise UnknownModelError(
            f"model name {name[:200]!r} is not a plain name: expected letters, digits, '_', '.' "
            "or '-' (no path separators, not '.' or '..'), naming a folder of the repository"
        )
    return name


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelRepository:
    """A folder of models, read on demand (so a reload sees new versions)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ModelConfigError(f"model repository {self.root} is not a directory")

    def models(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / CONFIG_FILE).is_file())

    def config(self, name: str) -> ModelConfig:
        folder = self.root / checked_model_name(name)
        if not (folder / CONFIG_FILE).is_file():
            raise UnknownModelError(
                f"no model {name!r} in {self.root}: expected {folder / CONFIG_FILE}; "
                f"available: {self.models()}"
            )
        return parse_config(folder / CONFIG_FILE, expected_name=name)

    def versions(self, name: str) -> list[int]:
        """Versions on disk that the model's version policy allows, ascending."""
        config = self.config(name)
        folder = self.root / name
        on_disk = sorted(
            int(p.name)
            for p in folder.iterdir()
            if is_version_number(p.name) and (p / MODEL_FILE).is_file()
        )
        policy = config.version_policy
        if policy.policy == "specific":
            return [v for v in on_disk if v in policy.versions]
        if policy.policy == "latest":
            return on_disk[-1:]
        return on_disk

    def resolve(self, name: str, version: int | None = None) -> ModelVersion:
        """The version to load: the given one (if served) or the newest served one."""
        config = self.config(name)
        served = self.versions(name)
        if not served:
            raise UnknownModelError(
                f"model {name!r} has no servable version under {self.root / name}"
            )
        if version is None:
            version = served[-1]
        elif version not in served:
            raise UnknownModelError(
                f"model {name!r} has no served version {version}; served: {served}"
            )
        return ModelVersion(
            config=config, version=version, path=self.root / name / str(version) / MODEL_FILE
        )


def verify_artifact(model: ModelVersion) -> None:
    """Refuse an artifact whose sha256 differs from the one its config records."""
    expected = model.config.sha256.get(model.version)
    if expected is None:
        return
    actual = file_sha256(model.path)
    if actual != expected:
        raise IntegrityError(
            f"{model.path}: sha256 is {actual}, but config.toml records {expected} for version "
            f"{model.version}: the file was modified or corrupted; restore it or re-publish the version"
        )
