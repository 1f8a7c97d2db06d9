"""The registry's layout on a `RegistryStore`, and the operations on it.

```
models/<model>/config.toml                          the model's repository config (first push)
models/<model>/<version>/<target>/model.onnx        the artifact
models/<model>/<version>/<target>/manifest.json     `fleetinfer compile`'s manifest, when compiled
models/<model>/<version>/<target>/build.json        written last, once: the build's record (sha256,
                                                    size); a build exists when this exists
desired/<model>.json                                rules: selector -> version (last match wins)
nodes/<node>.json                                   each node's status, written by the node
rollouts/<model>.json                               the model's current (or last) rollout
```

A build is immutable: `push` refuses a (model, version, target) that has a `build.json`. A fetch
verifies size and sha256 before the artifact reaches a model repository; a mismatch is an
`IntegrityError` and the download is deleted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import msgspec

from fleetinfer.compile.manifest import Manifest
from fleetinfer.errors import (
    ConfigError,
    IntegrityError,
    ModelConfigError,
    RegistryUnavailableError,
    UnknownModelError,
)
from fleetinfer.registry.store import RegistryStore, open_store
from fleetinfer.server.repository import CONFIG_FILE, MODEL_FILE, checked_model_name
from fleetinfer.server.session import MANIFEST_FILE

T = TypeVar("T")
BUILD_FILE = "build.json"
DEFAULT_TARGET = "cpu"  # a version pushed without a compile manifest


class Build(msgspec.Struct, frozen=True, kw_only=True):
    """One compiled artifact of one version for one target."""

    model: str
    version: int
    target: str
    precision: str
    sha256: str
    size_bytes: int
    pushed_at: str
    compiled: bool  # a compile manifest came with it
    accuracy_gate: str = ""  # the manifest's gate verdict: passed | failed | forced


class Rule(msgspec.Struct, frozen=True):
    selector: str
    version: int


class Desired(msgspec.Struct):
    """Which version each node group should serve; the last rule whose selector matches wins."""

    rules: list[Rule] = msgspec.field(default_factory=list)


class VersionHealth(msgspec.Struct):
    requests: int = 0
    errors: int = 0
    latency_p95_ms: float = 0.0


class NodeStatus(msgspec.Struct, kw_only=True):
    node: str
    attributes: dict[str, str]
    served: dict[str, int] = msgspec.field(default_factory=dict)
    wanted: dict[str, int] = msgspec.field(default_factory=dict)
    errors: dict[str, str] = msgspec.field(default_factory=dict)  # model -> why not as wanted
    health: dict[str, dict[str, VersionHealth]] = msgspec.field(default_factory=dict)
    updated_at: float = 0.0  # wall clock, seconds


@dataclass
class Fetched:
    build: Build
    artifact: Path
    config_toml: bytes
    manifest: bytes | None = field(default=None)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Registry:
    """The registry at a URL (`file:///…` or `s3://bucket/prefix`)."""

    def __init__(self, store: RegistryStore) -> None:
        self.store = store

    @classmethod
    def from_url(cls, url: str) -> Registry:
        return cls(open_store(url))

    @property
    def url(self) -> str:
        return self.store.url

    # -- versions ----------------------------------------------------------------------------

    def push(self, repo: Path, model: str, version: int | None = None) -> Build:
        """Upload `repo/model/version` (the newest when None) with its compile manifest."""
        checked_model_name(model)
        folder = repo / model
        version = version if version is not None else _newest_version(folder)
        artifact = folder / str(version) / MODEL_FILE
        if not artifact.is_file():
            raise UnknownModelError(f"{artifact} does not exist: push a version that is on disk")
        manifest_bytes = _read_optional(folder / str(version) / MANIFEST_FILE)
        manifest = None if manifest_bytes is None else Manifest.decode(manifest_bytes)
        data = artifact.read_bytes()
        build = _build_record(model, version, data, manifest)
        if manifest is not None and manifest.artifact_sha256 not in ("", build.sha256):
            raise IntegrityError(
                f"{artifact}: sha256 {build.sha256} differs from its manifest's "
                f"{manifest.artifact_sha256}: recompile, or remove the stale manifest"
            )
        base = self._build_key(model, version, build.target)
        if self.store.get(f"{base}/{BUILD_FILE}") is not None:
            raise ConfigError(
                f"{model} version {version} for target {build.target!r} is already in the "
                f"registry and versions are immutable: push it as a new version (--version N)"
            )
        self.store.put(f"models/{model}/{CONFIG_FILE}", (folder / CONFIG_FILE).read_bytes())
        self.store.put(f"{base}/{MODEL_FILE}", data)
        if manifest_bytes is not None:
            self.store.put(f"{base}/{MANIFEST_FILE}", manifest_bytes)
        if not self.store.put(f"{base}/{BUILD_FILE}", msgspec.json.encode(build), if_absent=True):
            raise ConfigError(f"{model} version {version} ({build.target}) was pushed meanwhile")
        return build

    def models(self) -> list[str]:
        return sorted({k.split("/")[1] for k in self.store.list("models") if k.count("/") >= 2})

    def builds(self, model: str, version: int | None = None) -> list[Build]:
        prefix = f"models/{model}" + ("" if version is None else f"/{version}")
        keys = [k for k in self.store.list(prefix) if k.endswith("/" + BUILD_FILE)]
        builds = [self._decode(Build, self.store.get(k), k) for k in keys]
        return sorted((b for b in builds if b is not None), key=lambda b: (b.version, b.target))

    def versions(self, model: str) -> list[int]:
        return sorted({b.version for b in self.builds(model)})

    def manifest(self, build: Build) -> Manifest | None:
        key = f"{self._build_key(build.model, build.version, build.target)}/{MANIFEST_FILE}"
        data = self.store.get(key)
        return None if data is None else Manifest.decode(data, origin=key)

    def fetch(self, build: Build, into: Path) -> Fetched:
        """Download a build's artifact into the folder `into` and verify it; a tampered or
        partial artifact is deleted and refused (`IntegrityError`)."""
        base = self._build_key(build.model, build.version, build.target)
        data = self.store.get(f"{base}/{MODEL_FILE}")
        config = self.store.get(f"models/{build.model}/{CONFIG_FILE}")
        if data is None or config is None:
            raise IntegrityError(
                f"registry {self.url}: {base} has a build record but no artifact or config: "
                "the push was interrupted or the object deleted; push a new version"
            )
        _verify(build, data, base)
        into.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=into, prefix=".fetch-", suffix=".onnx")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return Fetched(build, Path(tmp), config, self.store.get(f"{base}/{MANIFEST_FILE}"))

    # -- desired versions, node status, rollouts ---------------------------------------------

    def desired(self, model: str) -> Desired:
        key = f"desired/{model}.json"
        return self._decode(Desired, self.store.get(key), key) or Desired()

    def set_desired(self, model: str, desired: Desired) -> None:
        self.store.put(f"desired/{model}.json", msgspec.json.encode(desired))

    def desired_models(self) -> list[str]:
        return sorted(k[len("desired/") : -len(".json")] for k in self.store.list("desired"))

    def write_status(self, status: NodeStatus) -> None:
        self.store.put(f"nodes/{status.node}.json", msgspec.json.encode(status))

    def statuses(self) -> list[NodeStatus]:
        found = (self._decode(NodeStatus, self.store.get(k), k) for k in self.store.list("nodes"))
        return [s for s in found if s is not None]

    def read(self, key: str) -> bytes | None:
        return self.store.get(key)

    def write(self, key: str, data: bytes) -> None:
        self.store.put(key, data)

    @staticmethod
    def _build_key(model: str, version: int, target: str) -> str:
        return f"models/{model}/{version}/{target}"

    @staticmethod
    def _decode(kind: type[T], data: bytes | None, key: str) -> T | None:
        if data is None:
            return None
        try:
            return msgspec.json.decode(data, type=kind)
        except msgspec.DecodeError as exc:
            raise ModelConfigError(
                f"registry object {key} is not a valid {kind.__name__}: {exc}"
            ) from exc


def _verify(build: Build, data: bytes, where: str) -> None:
    if len(data) != build.size_bytes:
        raise IntegrityError(
            f"{where}/{MODEL_FILE}: {len(data)} bytes, expected {build.size_bytes}: a partial "
            "artifact; refused, nothing loaded. Re-push the version if it persists"
        )
    actual = sha256_hex(data)
    if actual != build.sha256:
        raise IntegrityError(
            f"{where}/{MODEL_FILE}: sha256 {actual}, expected {build.sha256}: the artifact was "
            "altered after push; refused, nothing loaded. Push a new version"
        )


def _build_record(model: str, version: int, data: bytes, manifest: Manifest | None) -> Build:
    return Build(
        model=model,
        version=version,
        target=manifest.target if manifest else DEFAULT_TARGET,
        precision=manifest.precision if manifest else "fp32",
        sha256=sha256_hex(data),
        size_bytes=len(data),
        pushed_at=now_iso(),
        compiled=manifest is not None,
        accuracy_gate=manifest.accuracy.gate if manifest else "",
    )


def _newest_version(folder: Path) -> int:
    versions = sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit())
    if not versions:
        raise UnknownModelError(f"{folder} has no version folder: compile or add one first")
    return versions[-1]


def _read_optional(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


__all__ = ["Build", "Desired", "NodeStatus", "Registry", "RegistryUnavailableError", "Rule"]
