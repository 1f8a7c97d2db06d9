"""The results-store contract: one row per task id, the first success wins.

Tasks run at least once, so a task may finish twice (a worker killed after storing but before
acking). `put` is idempotent by task id: once a task has a result, a second write changes nothing
and reports so, with one exception: a failure (dead, rejected) gives way to a later success, so a
task redriven from the dead-letter queue records its result. A success is never replaced.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class TaskStatus(StrEnum):
    """How a task ended."""

    SUCCEEDED = "succeeded"
    REJECTED = "rejected"  # user code raised Reject: the input is bad, no retry
    DEAD = "dead"  # retries exhausted; the message is in the dead-letter queue


@dataclass(frozen=True, slots=True)
class TaskResult:
    """The outcome of one task: `value` is the task's JSON return value, `error` its last error.

    `payload` is the payload the task ran on, and `payload_sha256` the sha256 of its canonical
    JSON (`fleetinfer.payloads.payload_sha256`); a store opened with `?payload=sha256` keeps
    only the hash, and reads back `payload` as None."""

    task_id: str
    task_name: str
    status: TaskStatus
    value: Any = None
    error: str | None = None
    attempts: int = 1
    worker: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    payload: Any = None
    payload_sha256: str | None = None
    models: str = ""  # what answered its model calls: "cdnet@2" (comma-joined; "@1|2": a swap)

    @property
    def duration_s(self) -> float:
        return self.finished_at - self.started_at


class ResultStore(ABC):
    """Where results go, keyed by task id."""

    url: str

    @abstractmethod
    def put(self, result: TaskResult) -> bool:
        """Store a result; True if stored (new, or a success replacing a failure), else False."""

    @abstractmethod
    def get(self, task_id: str) -> TaskResult | None:
        """The result of one task, or None."""

    @abstractmethod
    def count(self, status: TaskStatus | None = None) -> int:
        """How many results, optionally of one status."""

    @abstractmethod
    def iter_results(
        self,
        *,
        batch_size: int = 1000,
        status: TaskStatus | None = None,
        task_name: str | None = None,
    ) -> Iterator[TaskResult]:
        """Every result, in task-id order; only those of one status and/or one task if given."""

    @abstractmethod
    def clear(self) -> None:
        """Delete every result (tests and benchmarks)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
