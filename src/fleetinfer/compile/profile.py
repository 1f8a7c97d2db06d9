"""`profile_model`: sweep batch size x intra-op threads x precision (version) x instances.

Every configuration runs in one process, interleaved over rounds (see `measure`); memory is the PSS
a fresh process adds to create the sessions and run one batch (`memprobe`). The ONNX Runtime
default configuration (served version, intra-op threads 0 = runtime default, one instance, batch 1)
is always measured as the reference row. The best configuration is the highest samples/s among
those within the constraints (p99 latency, memory) whose version did not fail its accuracy gate;
`write_profile` writes it into `config.toml`.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fleetinfer.compile.calibration import RandomSource, Tensors, collect
from fleetinfer.compile.configfile import TomlValue, update_config
from fleetinfer.compile.manifest import read_manifest
from fleetinfer.compile.measure import Timing, interleaved, open_session, timed_round, warm_up
from fleetinfer.compile.memprobe import measure_memory
from fleetinfer.compile.targets import host_description
from fleetinfer.errors import ConfigError, NoFeasibleProfileError
from fleetinfer.server.repository import (
    CONFIG_FILE,
    MODEL_FILE,
    ModelConfig,
    ModelRepository,
    ModelVersion,
    verify_artifact,
)

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ProfileSpace:
    """The sweep. `versions=()` means every version on disk (each is one precision)."""

    batch_sizes: tuple[int, ...] = (1, 4, 8)
    intra_op_threads: tuple[int, ...] = (0, 1, 2)
    instances: tuple[int, ...] = (1,)
    versions: tuple[int, ...] = ()
    rounds: int = 3
    duration_s: float = 0.3
    measure_memory: bool = True

    def __post_init__(self) -> None:
        checks = {
            "batch_sizes": all(b >= 1 for b in self.batch_sizes) and self.batch_sizes,
            "intra_op_threads": all(t >= 0 for t in self.intra_op_threads)
            and self.intra_op_threads,
            "instances": all(i >= 1 for i in self.instances) and self.instances,
            "rounds": self.rounds >= 1,
            "duration_s": self.duration_s > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(
                    f"profile {name} = {getattr(self, name)!r} is invalid: batch sizes and "
                    "instances >= 1, threads >= 0 (0 = runtime default), rounds >= 1, duration > 0"
                )


@dataclass(frozen=True, slots=True)
class Constraints:
    max_p99_ms: float | None = None
    max_memory_mb: float | None = None


@dataclass(frozen=True, slots=True)
class ProfileRow:
    version: int
    precision: str
    batch_size: int
    intra_op_threads: int
    instances: int
    samples_per_s: float
    p50_latency_ms: float
    p99_latency_ms: float
    memory_mb: float | None
    feasible: bool
    note: str = ""

    @property
    def key(self) -> tuple[int, int, int, int]:
        return (self.version, self.batch_size, self.intra_op_threads, self.instances)


@dataclass(frozen=True, slots=True)
class ProfileReport:
    model: str
    host: str
    constraints: Constraints
    rows: tuple[ProfileRow, ...]
    default: ProfileRow
    best: ProfileRow

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "host": self.host,
            "constraints": asdict(self.constraints),
            "default": asdict(self.default),
            "best": asdict(self.best),
            "speedup_over_default": round(self.best.samples_per_s / self.default.samples_per_s, 4),
            "rows": [asdict(r) for r in self.rows],
        }


@dataclass(frozen=True, slots=True)
class _Candidate:
    version: ModelVersion
    precision: str
    session_config: dict[str, str]
    gate: str
    batch_size: int
    intra_op_threads: int
    instances: int
    inputs: Tensors = field(default_factory=dict)


def _versions(repository: ModelRepository, name: str, wanted: Sequence[int]) -> list[ModelVersion]:
    folder = repository.root / name
    on_disk = sorted(
        int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / MODEL_FILE).is_file()
    )
    missing = sorted(set(wanted) - set(on_disk))
    if missing:
        raise ConfigError(f"model {name!r} has no versions {missing} on disk; it has {on_disk}")
    config = repository.config(name)
    return [
        ModelVersion(config=config, version=v, path=folder / str(v) / MODEL_FILE)
        for v in (wanted or on_disk)
    ]


def _inputs(config: ModelConfig, batch: int) -> Tensors:
    return collect(RandomSource(config, count=1, batch=batch), config, what="profile")[0]


def _candidates(
    versions: Sequence[ModelVersion], space: ProfileSpace, default: ModelVersion
) -> list[_Candidate]:
    found: dict[tuple[int, int, int, int], _Candidate] = {}
    combos = itertools.product(versions, space.batch_sizes, space.intra_op_threads, space.instances)
    for version, batch, threads, instances in [*combos, (default, 1, 0, 1)]:
        if batch > version.config.max_batch_size:
            continue
        manifest = read_manifest(version.path.parent)
        found[(version.version, batch, threads, instances)] = _Candidate(
            version=version,
            precision=manifest.precision if manifest else "fp32",
            session_config=dict(manifest.session_config) if manifest else {},
            gate=manifest.accuracy.gate if manifest else "source",
            batch_size=batch,
            intra_op_threads=threads,
            instances=instances,
            inputs=_inputs(version.config, batch),
        )
    return list(found.values())


def _timings(candidates: Sequence[_Candidate], space: ProfileSpace) -> dict[int, Timing]:
    sessions: dict[tuple[int, int, int], list[Any]] = {}
    for c in candidates:
        key = (c.version.version, c.intra_op_threads, c.instances)
        if key not in sessions:
            sessions[key] = [
                open_session(
                    c.version.path,
                    intra_op_threads=c.intra_op_threads,
                    session_config=c.session_config,
                )
                for _ in range(c.instances)
            ]
    runs = {}
    for i, c in enumerate(candidates):
        group = sessions[(c.version.version, c.intra_op_threads, c.instances)]
        warm_up(group, c.inputs, calls=2)
        runs[str(i)] = functools.partial(timed_round, group, c.inputs, space.duration_s)
    return {int(k): v for k, v in interleaved(runs, rounds=space.rounds).items()}


def _memory(c: _Candidate) -> float:
    specs = [{"name": k, "dtype": v.dtype.str, "shape": list(v.shape)} for k, v in c.inputs.items()]
    measured = measure_memory(
        c.version.path,
        inputs=specs,
        intra_op_threads=c.intra_op_threads,
        instances=c.instances,
        session_config=c.session_config,
    )
    return measured["session_pss_mb"]


def _row(
    c: _Candidate, timing: Timing, memory_mb: float | None, constraints: Constraints
) -> ProfileRow:
    notes = []
    if c.gate == "failed":
        notes.append("accuracy gate failed")
    if constraints.max_p99_ms is not None and timing.p99_latency_ms > constraints.max_p99_ms:
        notes.append(f"p99 > {constraints.max_p99_ms:g} ms")
    if constraints.max_memory_mb is not None and (memory_mb or 0.0) > constraints.max_memory_mb:
        notes.append(f"memory > {constraints.max_memory_mb:g} MB")
    return ProfileRow(
        version=c.version.version,
        precision=c.precision,
        batch_size=c.batch_size,
        intra_op_threads=c.intra_op_threads,
        instances=c.instances,
        samples_per_s=round(timing.samples_per_s, 3),
        p50_latency_ms=round(timing.p50_latency_ms, 4),
        p99_latency_ms=round(timing.p99_latency_ms, 4),
        memory_mb=memory_mb,
        feasible=not notes,
        note="; ".join(notes),
    )


def _quiet(_: str) -> None:
    return None


def profile_model(
    repository_root: Path,
    model: str,
    space: ProfileSpace = ProfileSpace(),
    constraints: Constraints = Constraints(),
    *,
    on_step: Progress = _quiet,
) -> ProfileReport:
    """Measure every configuration of the sweep and pick the best feasible one."""
    repository = ModelRepository(repository_root)
    default = repository.resolve(model)
    versions = _versions(repository, model, space.versions)
    for version in versions:
        verify_artifact(version)
    candidates = _candidates(versions, space, default)
    on_step(f"timing {len(candidates)} configurations, {space.rounds} interleaved rounds")
    timings = _timings(candidates, space)
    on_step(
        "memory: one fresh process per configuration" if space.measure_memory else "memory: skipped"
    )
    rows = [
        _row(c, timings[i], _memory(c) if space.measure_memory else None, constraints)
        for i, c in enumerate(candidates)
    ]
    reference = next(r for r in rows if r.key == (default.version, 1, 0, 1))
    return ProfileReport(
        model, host_description(), constraints, tuple(rows), reference, _best(rows)
    )


def _best(rows: Sequence[ProfileRow]) -> ProfileRow:
    feasible = [r for r in rows if r.feasible]
    if not feasible:
        fastest = min(rows, key=lambda r: r.p99_latency_ms)
        raise NoFeasibleProfileError(
            f"no configuration meets the constraints; the lowest p99 was {fastest.p99_latency_ms:.3f} ms "
            f"(version {fastest.version}, batch {fastest.batch_size}, {fastest.note or 'ok'}): "
            "relax --max-p99-ms / --max-memory-mb or add smaller batch sizes"
        )
    return max(feasible, key=lambda r: r.samples_per_s)


def write_profile(
    repository_root: Path, model: str, best: ProfileRow
) -> dict[str, dict[str, TomlValue]]:
    """Write the chosen configuration into the model's `config.toml`; return what was set.

    Runtime threads, instance count and preferred batch size; when the best version is not the one
    served by default, the version policy serves exactly that version."""
    repository = ModelRepository(repository_root)
    updates: dict[str, dict[str, TomlValue]] = {
        "runtime": {"intra_op_threads": best.intra_op_threads},
        "instances": {"count": best.instances},
        "batching": {"preferred_batch_sizes": [best.batch_size]},
    }
    if repository.resolve(model).version != best.version:
        updates["version_policy"] = {"policy": "specific", "versions": [best.version]}
    update_config(repository.root / model / CONFIG_FILE, updates)
    return updates
