"""`<model>/<version>/manifest.json`: how a compiled version was built and what it measured.

Everything a reviewer needs to trust a compiled artifact: the source it came from (version and
sha256), the target and precision, the quantization settings and the calibration set's hash, the
accuracy against the FP32 source with the gate's verdict, the throughput and latency measured here
(or why they were not), and the tool versions. Encoded as JSON with msgspec; a manifest that does
not decode raises `ModelConfigError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from fleetinfer.errors import ModelConfigError
from fleetinfer.server.session import MANIFEST_FILE

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class QuantizationInfo:
    mode: str  # "none" | "static" | "dynamic"
    format: str = ""  # "QDQ"
    calibration_method: str = ""
    per_channel: bool = False
    reduce_range: bool = False
    activation_type: str = ""
    weight_type: str = ""
    excluded_nodes: tuple[str, ...] = ()
    calibration_batches: int = 0
    calibration_sha256: str = ""
    calibration_source: str = ""


@dataclass(frozen=True, slots=True)
class AccuracyInfo:
    evaluation: str  # what was evaluated, in words
    metric: str  # the task metric the gate watches
    threshold: float
    source: dict[str, float]
    compiled: dict[str, float]
    drop: float
    max_abs_diff: dict[str, float]
    gate: str  # "passed" | "failed" | "forced"
    evaluated_on: str  # provider and host: accuracy of a GPU target checked on CPU says so


@dataclass(frozen=True, slots=True)
class LatencyInfo:
    samples_per_s: float
    p50_latency_ms: float
    p99_latency_ms: float
    cpu_samples_per_s: float = 0.0  # per process CPU-second (see fleetinfer.compile.measure)


@dataclass(frozen=True, slots=True)
class PerformanceInfo:
    measured: bool
    reason: str = ""  # why not measured
    host: str = ""
    provider: str = ""
    batch_size: int = 1
    intra_op_threads: int = 0
    rounds: int = 0
    source: LatencyInfo | None = None
    compiled: LatencyInfo | None = None
    speedup: float = 0.0


@dataclass(frozen=True, slots=True)
class Manifest:
    model: str
    version: int
    source_version: int
    source_sha256: str
    artifact_sha256: str
    target: str
    precision: str
    quantization: QuantizationInfo
    offline_optimization: str
    session_config: dict[str, str]
    accuracy: AccuracyInfo
    performance: PerformanceInfo
    tools: dict[str, str]
    created_at: str
    published: bool
    notes: tuple[str, ...] = ()
    format_version: int = FORMAT_VERSION
    extra: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return msgspec.json.format(msgspec.json.encode(self), indent=2) + b"\n"

    @staticmethod
    def decode(data: bytes, *, origin: str = "manifest") -> Manifest:
        try:
            return msgspec.json.decode(data, type=Manifest)
        except msgspec.DecodeError as exc:
            raise ModelConfigError(f"{origin}: not a valid compile manifest: {exc}") from exc


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    path = folder / MANIFEST_FILE
    path.write_bytes(manifest.encode())
    return path


def read_manifest(folder: Path) -> Manifest | None:
    """The manifest of a version folder, or None when the version was not compiled."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    return Manifest.decode(path.read_bytes(), origin=str(path))
