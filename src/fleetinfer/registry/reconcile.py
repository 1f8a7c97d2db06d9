"""The node side of the registry: poll, download, verify, hot-reload, write status back.

Every `interval_s` (± `jitter`, so a fleet does not poll in step) a `Reconciler` reads each
model's desired rules, picks the version whose rule matches this node last, and the build of that
version whose target runs here (the most specific one). When that differs from what the node
serves it downloads the build, verifies its sha256, installs it into the node's model repository
(`<models>/<model>/<version>/model.onnx`, `config.toml` pinned to that version with its sha256)
and calls the model server's one reload path. The old version is served until the new one is
loaded; a version that fails to load is put back (the previous config restored, reloaded again)
and reported, and not retried until the desired version changes. A registry that cannot be
reached changes nothing: the node keeps serving what it has. Then it writes its status: served
and wanted versions, errors, and health counters per model version (`HealthBook`).
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from bisect import insort
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from fleetinfer.errors import FleetinferError, TransientError, UnknownModelError
from fleetinfer.registry.attributes import Selector, target_rank, target_runs_on
from fleetinfer.registry.registry import Build, Desired, NodeStatus, Registry, VersionHealth
from fleetinfer.server.repository import CONFIG_FILE, MODEL_FILE

log = logging.getLogger("fleetinfer.registry")
LATENCY_WINDOW = 512  # latencies kept per model version for p95

Reload = Callable[[str], list[FleetinferError]]


class HealthSource(Protocol):
    def snapshot(self) -> dict[str, dict[str, VersionHealth]]: ...


def desired_version(desired: Desired, attributes: Mapping[str, str]) -> int | None:
    """The version of the last rule whose selector matches these attributes."""
    version = None
    for rule in desired.rules:
        if Selector.parse(rule.selector).matches(attributes):
            version = rule.version
    return version


def build_for(builds: list[Build], attributes: Mapping[str, str]) -> Build | None:
    """The most specific build whose target runs on these attributes."""
    runnable = [b for b in builds if target_runs_on(b.target, attributes)]
    return max(runnable, key=lambda b: target_rank(b.target), default=None)


@dataclass
class _Counters:
    requests: int = 0
    errors: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))


class HealthBook:
    """Requests, errors and recent latencies per model version, as the node's tasks saw them."""

    def __init__(self) -> None:
        self._counters: dict[tuple[str, int], _Counters] = {}
        self._lock = threading.Lock()

    def record(self, model: str, version: int, latency_ms: float, *, ok: bool = True) -> None:
        with self._lock:
            counters = self._counters.setdefault((model, version), _Counters())
            counters.requests += 1
            counters.errors += 0 if ok else 1
            counters.latencies_ms.append(latency_ms)

    def snapshot(self) -> dict[str, dict[str, VersionHealth]]:
        with self._lock:
            found: dict[str, dict[str, VersionHealth]] = {}
            for (model, version), c in self._counters.items():
                found.setdefault(model, {})[str(version)] = VersionHealth(
                    c.requests, c.errors, _p95(list(c.latencies_ms))
                )
            return found


def _p95(values: list[float]) -> float:
    ordered: list[float] = []
    for v in values:
        insort(ordered, v)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else 0.0


class Reconciler:
    """One node's reconcile loop (`step()` once, `start()` a thread that steps until `stop()`)."""

    def __init__(
        self,
        registry: Registry,
        attributes: Mapping[str, str],
        models: Path,
        reload: Reload,
        *,
        health: HealthSource | None = None,
        interval_s: float = 10.0,
        jitter: float = 0.2,
    ) -> None:
        self.registry, self.attributes, self.models = registry, dict(attributes), models
        self.reload = reload
        self.health: HealthSource = health or HealthBook()
        self.interval_s, self.jitter = interval_s, jitter
        self.node = self.attributes["node"]
        self.served: dict[str, int] = _served_on_disk(models)
        self.wanted: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self._refused: set[tuple[str, int]] = set()  # failed to load: not retried
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Reconciler:
        self._thread = threading.Thread(target=self._loop, name="fleetinfer-reconcile", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.step()
            spread = self.interval_s * self.jitter
            self._stop.wait(self.interval_s + random.uniform(-spread, spread))

    def step(self) -> bool:
        """One poll; False when the registry could not be reached (nothing changed)."""
        try:
            for model in self.registry.desired_models():
                self._reconcile(model)
            self.registry.write_status(self.status())
        except TransientError as exc:
            log.warning("registry unreachable, still serving %s: %s", self.served, exc)
            return False
        except FleetinferError as exc:  # a registry object that does not decode, a bad selector
            log.error("reconcile failed, still serving %s: %s", self.served, exc)
            return False
        return True

    def status(self) -> NodeStatus:
        return NodeStatus(
            node=self.node,
            attributes=self.attributes,
            served=dict(self.served),
            wanted=dict(self.wanted),
            errors=dict(self.errors),
            health=self.health.snapshot(),
            updated_at=time.time(),
        )

    def _reconcile(self, model: str) -> None:
        version = desired_version(self.registry.desired(model), self.attributes)
        if version is None:
            return
        self.wanted[model] = version
        self._refused = {(m, v) for m, v in self._refused if m != model or v == version}
        if self.served.get(model) == version or (model, version) in self._refused:
            return
        try:
            self._install(model, version)
        except TransientError:
            raise
        except FleetinferError as exc:
            self.errors[model] = f"version {version}: {exc}"
            log.error("%s: not serving version %s: %s", model, version, exc)

    def _install(self, model: str, version: int) -> None:
        build = build_for(self.registry.builds(model, version), self.attributes)
        if build is None:
            targets = [b.target for b in self.registry.builds(model, version)]
            raise UnknownModelError(
                f"{model} version {version} has no build for this node (arch "
                f"{self.attributes.get('arch')}, features {self.attributes.get('cpu_features')!r}); "
                f"builds: {targets or 'none'}: compile and push one for its target"
            )
        fetched = self.registry.fetch(build, self.models / model)
        folder = self.models / model / str(version)
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(fetched.artifact, folder / MODEL_FILE)
        config_path = self.models / model / CONFIG_FILE
        previous = config_path.read_bytes() if config_path.is_file() else None
        _write_atomic(config_path, pinned_config(fetched.config_toml, version, build.sha256))
        failures = self.reload(model)
        if failures:
            self._put_back(model, version, previous, failures)
            return
        log.info("%s: now serving version %d (%s)", model, version, build.target)
        self.served[model] = version
        self.errors.pop(model, None)

    def _put_back(
        self, model: str, version: int, previous: bytes | None, failures: list[FleetinferError]
    ) -> None:
        config_path = self.models / model / CONFIG_FILE
        if previous is not None:
            _write_atomic(config_path, previous)
            self.reload(model)
        self._refused.add((model, version))
        raise FleetinferError(
            f"failed to load, still serving {self.served.get(model)}: {failures[0]}"
        )


_SECTION = re.compile(r"^\s*\[+\s*([A-Za-z_.0-9]+)\s*\]+")


def pinned_config(config_toml: bytes, version: int, sha256: str) -> bytes:
    """The registry's config.toml with its version policy and sha256 records replaced: this
    node serves `version` only, and refuses its artifact unless it hashes to `sha256`."""
    kept, skipping = [], False
    for line in config_toml.decode().splitlines():
        header = _SECTION.match(line)
        if header:
            name = header.group(1)
            skipping = name == "version_policy" or name.startswith("versions.")
        if not skipping:
            kept.append(line)
    kept += [
        "",
        "[version_policy]",
        'policy = "specific"',
        f"versions = [{version}]",
        "",
        f"[versions.{version}]",
        f'sha256 = "{sha256}"',
    ]
    return ("\n".join(kept) + "\n").encode()


def _served_on_disk(models: Path) -> dict[str, int]:
    """What a node's repository pins already (a restarted node starts from what it had)."""
    found: dict[str, int] = {}
    if not models.is_dir():
        return found
    for config in models.glob(f"*/{CONFIG_FILE}"):
        match = re.search(r"versions\s*=\s*\[\s*(\d+)\s*\]", config.read_text())
        if match:
            found[config.parent.name] = int(match.group(1))
    return found


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
