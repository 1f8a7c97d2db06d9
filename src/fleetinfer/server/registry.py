"""The models a server has loaded, by name and version, with load / unload / reload.

Readers (`resolve`) never block: the name -> version -> executor map is replaced as a whole under
the write lock (copy on write). A version leaves the map before its executor is closed, and a closed
executor refuses new requests, so a request that raced a reload simply resolves again and lands on
the new version: switching versions fails no request in flight.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from fleetinfer.errors import UnknownModelError
from fleetinfer.server.executor import ModelExecutor
from fleetinfer.server.metrics import StatsBook
from fleetinfer.server.repository import MODEL_FILE, ModelRepository, ModelVersion, file_sha256
from fleetinfer.server.session import OrtModel

log = logging.getLogger(__name__)
Loaded = Mapping[str, Mapping[int, ModelExecutor]]


class ModelRegistry:
    """Loaded model versions of one repository."""

    def __init__(
        self,
        repository: ModelRepository,
        stats: StatsBook,
        *,
        intra_op_threads: int | None = None,
        instance_count: int | None = None,
    ) -> None:
        self.repository, self.stats = repository, stats
        self.intra_op_threads, self.instance_count = intra_op_threads, instance_count
        self._models: Loaded = {}
        self.generation = 0  # bumped on every change: cached request layouts check it
        self._digests: dict[tuple[str, int], str] = {}
        self._write = threading.Lock()

    def resolve(self, name: str, version: int | None = None) -> ModelExecutor:
        versions = self._models.get(name)
        if not versions:
            raise UnknownModelError(
                f"model {name!r} is not loaded by this server; loaded: {sorted(self._models)}"
            )
        if version is None:
            return versions[max(versions)]
        executor = versions.get(version)
        if executor is None:
            raise UnknownModelError(
                f"model {name!r} has no loaded version {version}; loaded: {sorted(versions)}"
            )
        return executor

    def loaded(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(sorted(v)) for name, v in self._models.items()}

    def load_all(self) -> None:
        for name in self.repository.models():
            self.reload(name)

    def load(self, name: str, version: int | None = None) -> list[int]:
        """Load `version` (any version on disk), or the versions the policy serves."""
        versions = self.repository.versions(name) if version is None else [version]
        if not versions:
            raise UnknownModelError(f"model {name!r} has no servable version on disk")
        with self._write:
            fresh = {v: self._executor(name, v) for v in versions}
            self._swap(name, {**self._models.get(name, {}), **fresh})
        return versions

    def unload(self, name: str, version: int | None = None) -> None:
        """Unload one version, or the whole model; requests already queued still run."""
        with self._write:
            current = dict(self._models.get(name, {}))
            if not current or (version is not None and version not in current):
                raise UnknownModelError(f"model {name!r} version {version} is not loaded")
            kept = {} if version is None else {v: e for v, e in current.items() if v != version}
            self._swap(name, kept)

    def reload(self, name: str) -> list[int]:
        """Bring `name` in line with the repository: new versions in, changed artifacts re-read,
        versions the policy no longer serves out."""
        served = self.repository.versions(name)
        if not served:
            raise UnknownModelError(f"model {name!r} has no servable version on disk")
        with self._write:
            current = self._models.get(name, {})
            kept = {v: e for v, e in current.items() if v in served and not self._changed(name, v)}
            fresh = {v: self._executor(name, v) for v in served if v not in kept}
            self._swap(name, {**kept, **fresh})
        return served

    def close(self) -> None:
        with self._write:
            for name in list(self._models):
                self._swap(name, {})

    def _changed(self, name: str, version: int) -> bool:
        path = self.repository.root / name / str(version) / MODEL_FILE
        return not path.is_file() or file_sha256(path) != self._digests.get((name, version))

    def _executor(self, name: str, version: int) -> ModelExecutor:
        config = self.repository.config(name)
        path = self.repository.root / name / str(version) / MODEL_FILE
        if not path.is_file():
            raise UnknownModelError(f"model {name!r} has no version {version}: {path} is missing")
        model = OrtModel(
            ModelVersion(config=config, version=version, path=path),
            intra_op_threads=self.intra_op_threads,
        )
        self._digests[(name, version)] = file_sha256(path)
        log.info("loaded %s version %d with %s", name, version, model.providers)
        return ModelExecutor(model, self.stats.get(name, version), instances=self.instance_count)

    def _swap(self, name: str, versions: dict[int, ModelExecutor]) -> None:
        old = self._models.get(name, {})
        models = {**self._models, name: versions}
        if not versions:
            del models[name]
        self._models = models  # readers see the old map or the new one, never a mix
        self.generation += 1
        for version, executor in old.items():
            if versions.get(version) is not executor:
                executor.close()
