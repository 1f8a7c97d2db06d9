"""Triton-like model repository: `<repo>/<model>/config.toml` and `<repo>/<model>/<version>/model.onnx`.

A config names its inputs and outputs (name, dtype, full shape with -1 for a dynamic dimension,
batch first), the maximum batch size, batching, instance count, runtime options and the version
policy. A missing or inconsistent config raises `ModelConfigError` naming the file and the field.
Each version may record the sha256 of its artifact (`[versions.N] sha256 = "…"`); a recorded hash
that does not match the file raises `IntegrityError` before the model is loaded.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fleetinfer.errors import IntegrityError, ModelConfigError, UnknownModelError

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
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
VERSION_POLICIES = ("latest", "specific", "all")


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


class _Fields:
    """Typed field access over a TOML table that names the file and field in every error."""

    def __init__(self, path: Path, table: Mapping[str, Any], prefix: str = "") -> None:
        self.path, self.table, self.prefix = path, table, prefix

    def fail(self, key: str, expected: str, got: object) -> ModelConfigError:
        return ModelConfigError(
            f"{self.path}: field `{self.prefix}{key}` must be {expected}, got {got!r}"
        )

    def get(
        self, key: str, kind: type | tuple[type, ...], expected: str, default: Any = ...
    ) -> Any:
        if key not in self.table:
            if default is ...:
                raise ModelConfigError(f"{self.path}: missing required field `{self.prefix}{key}`")
            return default
        value = self.table[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise self.fail(key, expected, value)
        return value

    def sub(self, key: str) -> _Fields:
        table = self.get(key, dict, "a table", default={})
        return _Fields(self.path, table, f"{self.prefix}{key}.")


def _tensor_specs(fields: _Fields, key: str) -> tuple[TensorSpec, ...]:
    entries = fields.get(key, list, f"an array of [[{key}]] tables")
    if not entries:
        raise fields.fail(key, "a non-empty array of tables", entries)
    specs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise fields.fail(f"{key}[{i}]", "a table", entry)
        specs.append(_tensor_spec(_Fields(fields.path, entry, f"{key}[{i}].")))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise fields.fail(key, "tensors with distinct names", names)
    return tuple(specs)


def _tensor_spec(fields: _Fields) -> TensorSpec:
    name = fields.get("name", str, "a string")
    dtype = fields.get("dtype", str, f"one of {sorted(DTYPES)}")
    if dtype not in DTYPES:
        raise fields.fail("dtype", f"one of {sorted(DTYPES)}", dtype)
    shape = fields.get("shape", list, "a list of integers (-1 = dynamic)")
    if not shape or not all(isinstance(d, int) and (d == -1 or d > 0) for d in shape):
        raise fields.fail("shape", "a non-empty list of positive integers or -1", shape)
    return TensorSpec(name=name, dtype=dtype, shape=tuple(shape))


def _runtime(fields: _Fields) -> RuntimeConfig:
    providers = fields.get(
        "execution_providers", list, "a list of provider names", ["CPUExecutionProvider"]
    )
    level = fields.get("graph_optimization_level", str, f"one of {OPTIMIZATION_LEVELS}", "all")
    if level not in OPTIMIZATION_LEVELS:
        raise fields.fail("graph_optimization_level", f"one of {OPTIMIZATION_LEVELS}", level)
    intra = fields.get("intra_op_threads", int, "an integer >= 0 (0 = runtime default)", 0)
    inter = fields.get("inter_op_threads", int, "an integer >= 0", 1)
    if intra < 0 or inter < 0:
        raise fields.fail("intra_op_threads", "integers >= 0", (intra, inter))
    return RuntimeConfig(
        execution_providers=tuple(str(p) for p in providers),
        intra_op_threads=intra,
        inter_op_threads=inter,
        graph_optimization_level=level,
        memory_arena=fields.get("memory_arena", bool, "true or false", True),
    )


def _version_policy(fields: _Fields) -> VersionPolicy:
    policy = fields.get("policy", str, f"one of {VERSION_POLICIES}", "latest")
    if policy not in VERSION_POLICIES:
        raise fields.fail("policy", f"one of {VERSION_POLICIES}", policy)
    versions = fields.get("versions", list, "a list of version numbers", [])
    if policy == "specific" and not versions:
        raise fields.fail("versions", "a non-empty list when policy = 'specific'", versions)
    return VersionPolicy(policy=policy, versions=tuple(int(v) for v in versions))


def _sha256s(fields: _Fields) -> dict[int, str]:
    hashes: dict[int, str] = {}
    for key, entry in fields.table.items():
        if not key.isdigit() or not isinstance(entry, dict):
            raise fields.fail(key, "a [versions.<number>] table", entry)
        digest = _Fields(fields.path, entry, f"{fields.prefix}{key}.").get(
            "sha256", str, "a hex sha256"
        )
        hashes[int(key)] = digest.lower()
    return hashes


def parse_config(path: Path, *, expected_name: str | None = None) -> ModelConfig:
    """Read and validate one `config.toml`."""
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelConfigError(
            f"{path}: missing model config; every model folder needs one"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ModelConfigError(f"{path}: not valid TOML: {exc}") from exc
    fields = _Fields(path, table)
    name = fields.get("name", str, "a string")
    if expected_name is not None and name != expected_name:
        raise fields.fail("name", f"the folder name {expected_name!r}", name)
    max_batch = fields.get("max_batch_size", int, "an integer >= 1")
    if max_batch < 1:
        raise fields.fail("max_batch_size", "an integer >= 1", max_batch)
    batching = fields.sub("batching")
    instances = fields.sub("instances")
    return ModelConfig(
        name=name,
        max_batch_size=max_batch,
        inputs=_tensor_specs(fields, "inputs"),
        outputs=_tensor_specs(fields, "outputs"),
        batching=BatchingConfig(
            max_queue_delay_us=batching.get("max_queue_delay_us", int, "an integer >= 0", 0),
            preferred_batch_sizes=tuple(
                batching.get("preferred_batch_sizes", list, "a list of integers", [])
            ),
        ),
        instance_count=instances.get("count", int, "an integer >= 1", 1),
        runtime=_runtime(fields.sub("runtime")),
        version_policy=_version_policy(fields.sub("version_policy")),
        sha256=_sha256s(fields.sub("versions")),
    )


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
        folder = self.root / name
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
            int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / MODEL_FILE).is_file()
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
