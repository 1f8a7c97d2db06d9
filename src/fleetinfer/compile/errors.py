"""Errors of `fleetinfer compile` and `fleetinfer profile`, placed in the fleetinfer tree:

```
FleetinferError
├── ConfigError
│   ├── UnsupportedBuildError   the target / precision combination cannot be built (here)
│   └── NoFeasibleProfileError  no profiled configuration meets the constraints
├── InputError
│   └── CalibrationError        the calibration or evaluation inputs do not fit the model
├── ArtifactLoadError           ONNX Runtime refused to load a source or compiled artifact
└── AccuracyGateError           the compiled model loses more task metric than allowed
```
"""

from __future__ import annotations

from fleetinfer.errors import ConfigError, FleetinferError, InputError


class UnsupportedBuildError(ConfigError):
    """The target / precision combination cannot be built, or needs a missing package."""


class NoFeasibleProfileError(ConfigError):
    """No profiled configuration meets the latency and memory constraints."""


class CalibrationError(InputError):
    """Calibration or evaluation inputs are empty or do not match the model's inputs."""


class ArtifactLoadError(FleetinferError):
    """ONNX Runtime refused to load a source or compiled artifact."""


class AccuracyGateError(FleetinferError):
    """The compiled version loses more of the task metric than the gate allows."""

    def __init__(
        self,
        *,
        model: str,
        version: int,
        metric: str,
        source: float,
        compiled: float,
        threshold: float,
    ) -> None:
        drop = source - compiled
        super().__init__(
            f"accuracy gate refused to publish {model!r} version {version}: {metric} fell from "
            f"{source:.4f} (FP32 source) to {compiled:.4f}, a drop of {drop:.4f} above the allowed "
            f"{threshold:.4f}. The version is on disk but not served: fix the calibration "
            "(representative inputs, another --calibration-method, --exclude-nodes for the heads) "
            "or publish anyway with --force"
        )
        self.model, self.version, self.metric = model, version, metric
        self.source, self.compiled, self.drop, self.threshold = source, compiled, drop, threshold
