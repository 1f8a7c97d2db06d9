"""One exception tree for fleetinfer, split by what the caller does about it.

```
FleetinferError
├── ConfigError                 fix the configuration (bad URL, missing extra, bad config.toml)
│   ├── MissingExtraError       an optional driver is not installed: the message names the extra
│   ├── ModelConfigError        a model repository entry is missing or inconsistent
│   ├── UnsupportedBuildError   a compile target / precision cannot be built here
│   ├── NoFeasibleProfileError  no profiled configuration meets the constraints
│   └── InfeasiblePlanError     no instance mix meets the deadline / budget (says what would)
├── InputError                  fix the input; retrying the same thing fails the same way
│   ├── PayloadTooLargeError    a message or request above its size limit
│   ├── MalformedMessageError   a message that is not valid JSON / not a task envelope
│   ├── UnknownTaskError        a message names a task nobody registered
│   ├── UnknownModelError       no such model or version in the repository
│   │   └── ModelNotServedError a task asked for a model this node does not serve
│   ├── InvalidInputError       wrong tensor name, dtype, shape or batch size
│   ├── CalibrationError        calibration or evaluation inputs do not fit the model
│   └── RolloutError            a rollout command that cannot apply (no node matches, one running)
├── TransientError              retry later; the condition is expected to pass
│   ├── BrokerUnavailableError  the queue backend cannot be reached
│   ├── StoreUnavailableError   the results store cannot be reached
│   ├── ServerUnavailableError  the model server cannot be reached
│   ├── ModelDeadlineError      a model call got no reply within its deadline (server hung)
│   └── RegistryUnavailableError the model registry (folder, S3) cannot be reached
├── QueueError                  a queue operation was refused by its semantics
│   └── ReceiptExpiredError     ack / release / extend on a receipt that is no longer valid
├── InferenceError              the model ran and failed (execution error inside the runtime)
├── TaskTimeoutError            a task ran past its timeout_s: a failure, retried with backoff
├── IntegrityError              an artifact does not match its recorded sha256
├── ArtifactLoadError           ONNX Runtime refused to load a source or compiled artifact
└── AccuracyGateError           a compiled model loses more task metric than allowed: not published
```

User task code steers the outcome of a task with :class:`fleetinfer.task.Retry` and
:class:`fleetinfer.task.Reject`, which are control-flow signals rather than errors and live there.
"""

from __future__ import annotations


class FleetinferError(Exception):
    """Root of every error fleetinfer raises on purpose."""


class ConfigError(FleetinferError):
    """The configuration is wrong: fix it, retrying will not help."""


class MissingExtraError(ConfigError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package {module!r}, which is not installed: "
            f"run `pip install 'fleetinfer[{extra}]'`"
        )
        self.module = module
        self.extra = extra


class ModelConfigError(ConfigError):
    """A model repository entry is missing or inconsistent; the message names file and field."""


class InputError(FleetinferError):
    """The input is wrong: fix it, retrying the same input fails the same way."""


class PayloadTooLargeError(InputError):
    """A message or request is above its size limit."""

    def __init__(self, what: str, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(
            f"{what} is {size_bytes} bytes, above the limit of {limit_bytes} bytes: "
            "send a reference to the data (a path or URL) instead of the data itself"
        )
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class MalformedMessageError(InputError):
    """A message body is not valid JSON or not a task envelope."""


class UnknownTaskError(InputError):
    """A message names a task that is not registered in the running app."""


class UnknownModelError(InputError):
    """A request names a model or version the repository does not have."""


class ModelNotServedError(UnknownModelError):
    """A task asked for a model this node does not serve: released for another node."""


class InvalidInputError(InputError):
    """A tensor has the wrong name, dtype, shape or batch size."""


class TransientError(FleetinferError):
    """A passing condition: retry later."""


class BrokerUnavailableError(TransientError):
    """The queue backend could not be reached."""


class StoreUnavailableError(TransientError):
    """The results store could not be reached."""


class ServerUnavailableError(TransientError):
    """The model server could not be reached."""


class ModelDeadlineError(TransientError):
    """A model call (or a connection's first request) got no reply within its deadline: the
    server is hung or far behind. The task is released for a retry; the node restarts a server
    that stops answering its probes."""


class RegistryUnavailableError(TransientError):
    """The model registry could not be reached; nodes keep serving what they have."""


class QueueError(FleetinferError):
    """A queue operation was refused by the queue's semantics."""


class ReceiptExpiredError(QueueError):
    """The receipt handle no longer holds the message (visibility expired or already acked)."""


class InferenceError(FleetinferError):
    """The model runtime failed while executing a request."""


class TaskTimeoutError(FleetinferError):
    """A task ran past its `timeout_s`; it counts as a failure and is retried."""


class IntegrityError(FleetinferError):
    """An artifact does not match its recorded sha256."""


class UnsupportedBuildError(ConfigError):
    """The target / precision combination cannot be built, or needs a missing package."""


class NoFeasibleProfileError(ConfigError):
    """No profiled configuration meets the latency and memory constraints."""


class InfeasiblePlanError(ConfigError):
    """No instance mix meets the deadline or the budget; the message says by how much and what
    would (`fleetinfer plan`)."""


class CalibrationError(InputError):
    """Calibration or evaluation inputs are empty or do not match the model's inputs."""


class RolloutError(InputError):
    """A rollout command that cannot apply: no node matches, another rollout runs, bad gate."""


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
