"""The worker loop: receive → decode → run → store → settle, one message at a time.

Outcomes, and what happens to the message:

    succeeded   result stored (idempotent by task id), then ack
    retried     task raised Retry(delay_s): released, visible again after delay_s (a Retry on
                the last allowed receive is a failure: the task is dead, not retried forever)
    failed      task raised anything else, receives left: released with exponential backoff
    dead        task raised on its last allowed receive: DEAD result (last error) + dead-letter
    rejected    task raised Reject(reason): REJECTED result + dead-letter with the reason
    malformed   body too large, not an envelope, or an unknown task: dead-letter with the reason
    unserved    task asked for a model this node does not serve: released with backoff for
                another node (its receive count still grows: no node serving it dead-letters it)
    duplicate   the task already has a SUCCEEDED result (a redelivery): ack without running

A result is always stored before its message is acked, so a crash between the two runs the task
again and the second `put` changes nothing. A worker is started by the node agent as
`python -m fleetinfer.node.worker --config JSON --events-fd FD` and reports on that pipe.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import msgspec

from fleetinfer.errors import (
    ConfigError,
    FleetinferError,
    InputError,
    ModelNotServedError,
    PayloadTooLargeError,
    ReceiptExpiredError,
    TaskTimeoutError,
    TransientError,
    UnknownModelError,
)
from fleetinfer.node.answered import AnsweredBy, loaded_versions
from fleetinfer.node.events import EventSink, MemoryEvents
from fleetinfer.node.lease import Lease
from fleetinfer.node.placement import open_node_queues, pick_device_socket
from fleetinfer.payloads import payload_sha256
from fleetinfer.queue.base import MAX_DELAY_S, MAX_MESSAGE_BYTES, Broker, Message
from fleetinfer.results import TaskResult, TaskStatus, open_store
from fleetinfer.results.base import ResultStore
from fleetinfer.task import (
    App,
    Envelope,
    Reject,
    Retry,
    Task,
    TaskContext,
    resolve_target,
)

if TYPE_CHECKING:
    from fleetinfer.client import ModelClient, ModelHandle

log = logging.getLogger("fleetinfer.worker")

MAX_REASON_CHARS = 2000
IDLE_PAUSE_S = 0.5


class WorkerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything a worker process needs, passed to it as JSON on its command line."""

    target: str
    queue_url: str
    results_url: str
    models: str | None = None
    client_mode: str = "inprocess"
    intra_op_threads: int | None = None
    triton_url: str | None = None
    wait_s: float = 1.0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    grace_s: float = 100.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0
    name: str = ""
    log_format: str = "text"  # or "json" (fleetinfer.node.logs)
    nice: int = 0  # added to the worker process's niceness when it starts (0 to 19)
    attributes: dict[str, str] | None = None  # placement: also read the classes these satisfy

    def encode(self) -> str:
        return msgspec.json.encode(self).decode("utf-8")

    @classmethod
    def decode(cls, text: str) -> WorkerConfig:
        try:
            return msgspec.json.decode(text, type=cls)
        except msgspec.DecodeError as exc:
            raise ConfigError(
                f"worker configuration is invalid ({exc}): got {text[:200]!r}"
            ) from exc


class Outcome(StrEnum):
    """How the worker settled one message."""

    SUCCEEDED = "succeeded"
    RETRIED = "retried"
    FAILED = "failed"
    DEAD = "dead"
    REJECTED = "rejected"
    MALFORMED = "malformed"
    DUPLICATE = "duplicate"
    UNSERVED = "unserved"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One run of a task: its value or the exception it raised, and when."""

    value: Any
    error: Exception | None
    started_at: float
    finished_at: float
    models: str = ""  # what answered its model calls (`fleetinfer.node.answered`)


def backoff_s(receive_count: int, *, base_s: float, max_s: float) -> float:
    """Delay before the next try after a failure: base, 2×base, 4×base … capped at max_s."""
    exponent = min(max(receive_count - 1, 0), 30)
    return float(min(base_s * 2.0**exponent, max_s, MAX_DELAY_S))


def describe(exc: BaseException) -> str:
    """`TypeName: message`, cut to MAX_REASON_CHARS."""
    return f"{type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]


class Worker:
    """Runs the tasks of one app from one queue, storing results in one store."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        app: App | None = None,
        broker: Broker | None = None,
        store: ResultStore | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.config = config
        self.app = app if app is not None else resolve_target(config.target).app
        self.broker = (
            broker if broker is not None else open_node_queues(config.queue_url, config.attributes)
        )
        self.store = store if store is not None else open_store(config.results_url)
        self.events: EventSink = events if events is not None else MemoryEvents()
        self.name = config.name or f"{socket.gethostname()}:{os.getpid()}"
        self._client: ModelClient | None = None
        self._client_lock = threading.Lock()
        self._stopping = threading.Event()
        self._abandon_at: float | None = None
        self._task_id = ""  # the task of the message being processed (for its event)
        self._started = time.monotonic()  # when the message now handled was received
        self._reported = False  # its `task` event is out

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> None:
        """Work until `stop()`; then close connections."""
        self.events.emit("ready", pid=os.getpid(), worker=self.name)
        try:
            while not self._stopping.is_set():
                self.step()
        finally:
            self.close()

    def stop(self, *, grace_s: float | None = None) -> None:
        """Stop receiving; a task still running after `grace_s` is released and the process ends.
        A later call may shorten the grace (never lengthen it)."""
        self._stopping.set()
        grace = self.config.grace_s if grace_s is None else grace_s
        abandon_at = time.monotonic() + grace
        if self._abandon_at is None or abandon_at < self._abandon_at:
            self._abandon_at = abandon_at

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self.broker.close()
        self.store.close()

    # -- one message -------------------------------------------------------------------------

    def step(self) -> Outcome | None:
        """Receive at most one message and settle it; None when none came."""
        message = self._receive()
        if message is not None and self._stopping.is_set():
            self._release_unstarted(message)  # came as the drain began: another node runs it
            return None
        return None if message is None else self.process(message)

    def process(self, message: Message) -> Outcome:
        """Decode, run, store and settle one received message."""
        self._started = time.monotonic()
        self._reported = False
        self._task_id = ""
        with self._lease(message) as lease:
            outcome, task_name = self._handle(lease)
        if not self._reported:
            self._report(outcome, task_name)
        return outcome

    def _report(self, outcome: Outcome, task_name: str) -> None:
        """The `task` event; for an outcome with a stored result, right after the store and
        before the message is settled, so that a worker killed in between loses no count (the
        redelivery then counts as a duplicate, which it is)."""
        duration_s = time.monotonic() - self._started
        self.events.emit(
            "task",
            outcome=str(outcome),
            task=task_name,
            task_id=self._task_id,
            duration_s=duration_s,
        )
        self._reported = True

    def _release_unstarted(self, message: Message) -> None:
        try:
            self.broker.release(message.receipt)
        except FleetinferError as exc:
            log.warning("could not release message %s on drain: %s", message.id, exc)

    def _receive(self) -> Message | None:
        try:
            messages = self.broker.receive(max_messages=1, wait_s=self.config.wait_s)
        except TransientError as exc:
            log.warning("receive failed, retrying in %.1f s: %s", IDLE_PAUSE_S, exc)
            self._stopping.wait(IDLE_PAUSE_S)
            return None
        return messages[0] if messages else None

    def _lease(self, message: Message) -> Lease:
        return Lease(
            self.broker,
            message,
            visibility_timeout_s=self.broker.visibility_timeout_s,
            abandon_at=lambda: self._abandon_at,
            on_abandon=self._on_abandon,
        )

    def _on_abandon(self, message: Message) -> None:
        self.events.emit("abandoned", message_id=message.id, pid=os.getpid())
        logging.shutdown()
        os._exit(0)

    def _handle(self, lease: Lease) -> tuple[Outcome, str]:
        try:
            envelope, task = self._decode(lease.message)
        except InputError as exc:
            reason = describe(exc)
            self._settle(lease, Outcome.MALFORMED, lambda r: self.broker.dead_letter(r, reason))
            log.error("dead-lettered message %s: %s", lease.message.id, reason)
            return Outcome.MALFORMED, ""
        self._task_id = envelope.id
        if self._already_succeeded(envelope.id):
            self._settle(lease, Outcome.DUPLICATE, self.broker.ack)
            return Outcome.DUPLICATE, task.name
        attempt = self._run(lease, envelope, task)
        try:
            return self._conclude(lease, envelope, task, attempt), task.name
        except TransientError as exc:
            return self._retry_later(lease, exc), task.name

    def _retry_later(self, lease: Lease, exc: TransientError) -> Outcome:
        """The store (or broker) could not be reached: the message comes back after a backoff."""
        count = lease.message.receive_count
        delay_s = backoff_s(
            count, base_s=self.config.backoff_base_s, max_s=self.config.backoff_max_s
        )
        log.warning("message %s: %s; released for %.1f s", lease.message.id, exc, delay_s)
        return self._settle(
            lease, Outcome.FAILED, lambda r: self.broker.release(r, delay_s=delay_s)
        )

    # -- decode ------------------------------------------------------------------------------

    def _decode(self, message: Message) -> tuple[Envelope, Task]:
        size_bytes = len(message.body.encode("utf-8", "surrogatepass"))  # bad text: decode says
        if size_bytes > self.config.max_message_bytes:
            raise PayloadTooLargeError("message body", size_bytes, self.config.max_message_bytes)
        envelope = Envelope.decode(message.body)
        return envelope, self.app.get(envelope.task)

    def _already_succeeded(self, task_id: str) -> bool:
        try:
            existing = self.store.get(task_id)
        except TransientError as exc:
            log.warning("could not look up task %s, running it: %s", task_id, exc)
            return False
        return existing is not None and existing.status is TaskStatus.SUCCEEDED

    # -- run ---------------------------------------------------------------------------------

    def _run(self, lease: Lease, envelope: Envelope, task: Task) -> Attempt:
        answered = AnsweredBy(lambda name: loaded_versions(self._client, name))
        ctx = TaskContext(
            task_id=envelope.id,
            task_name=task.name,
            receive_count=lease.message.receive_count,
            logger=logging.getLogger(f"fleetinfer.task.{task.name}"),
            _heartbeat=lease.extend,
            _models=lambda name: self._model(name, answered),
        )
        started_at = time.time()
        try:
            with _time_limit(task):
                value = task(ctx, envelope.payload)
            _check_json(task, value)
        except Exception as exc:  # a server that failed the task is not asked again
            models = answered.models(look=not isinstance(exc, TransientError))
            return Attempt(None, exc, started_at, time.time(), models)
        return Attempt(value, None, started_at, time.time(), answered.models())

    def _model(self, name: str, answered: AnsweredBy | None = None) -> ModelHandle:
        with self._client_lock:
            if self._client is None:
                self._client = self._open_client()
        try:
            handle = self._client.model(name)
            if answered is not None:
                answered.first_use(name)
            return handle
        except UnknownModelError as exc:  # another node may serve it
            raise ModelNotServedError(f"this node does not serve model {name!r}: {exc}") from exc

    def _open_client(self) -> ModelClient:
        from fleetinfer.client import ModelClient

        if self.config.client_mode == "inprocess" and self.config.models is None:
            raise ModelNotServedError(
                "a task asked for a model but this worker has no model repository: "
                "start it with --models <repository folder> (or use the shared model server)"
            )
        models = None if self.config.models is None else Path(self.config.models)
        return ModelClient.from_mode(
            self.config.client_mode,
            repository=models,
            intra_op_threads=self.config.intra_op_threads,
            url=self.config.triton_url,
            socket_path=pick_device_socket(),  # None: the node's one server ($FLEETINFER_SOCKET)
        )

    # -- store and settle --------------------------------------------------------------------

    def _conclude(self, lease: Lease, envelope: Envelope, task: Task, attempt: Attempt) -> Outcome:
        error = attempt.error
        count = lease.message.receive_count
        if error is None:
            self._store(envelope, task, attempt, TaskStatus.SUCCEEDED, count)
            self._report(Outcome.SUCCEEDED, task.name)
            return self._settle(lease, Outcome.SUCCEEDED, self.broker.ack)
        if isinstance(error, Retry) and count < self.max_receives(task):
            delay_s = min(max(error.delay_s, 0.0), MAX_DELAY_S)
            return self._settle(
                lease, Outcome.RETRIED, lambda r: self.broker.release(r, delay_s=delay_s)
            )
        if isinstance(error, ModelNotServedError):
            return self._release_unserved(lease, envelope, error)
        if isinstance(error, Reject):
            self._store(envelope, task, attempt, TaskStatus.REJECTED, count)
            self._report(Outcome.REJECTED, task.name)
            return self._settle(
                lease, Outcome.REJECTED, lambda r: self.broker.dead_letter(r, error.reason)
            )
        return self._conclude_failure(lease, envelope, task, attempt)

    def _conclude_failure(
        self, lease: Lease, envelope: Envelope, task: Task, attempt: Attempt
    ) -> Outcome:
        assert attempt.error is not None
        count = lease.message.receive_count
        reason = describe(attempt.error)
        if count >= self.max_receives(task):
            log.error(
                "task %s %s is dead after %d receives: %s", task.name, envelope.id, count, reason
            )
            self._store(envelope, task, attempt, TaskStatus.DEAD, count)
            self._report(Outcome.DEAD, task.name)
            return self._settle(lease, Outcome.DEAD, lambda r: self.broker.dead_letter(r, reason))
        log.warning(
            "task %s %s failed (receive %d), will retry: %s", task.name, envelope.id, count, reason
        )
        delay_s = backoff_s(
            count, base_s=self.config.backoff_base_s, max_s=self.config.backoff_max_s
        )
        return self._settle(
            lease, Outcome.FAILED, lambda r: self.broker.release(r, delay_s=delay_s)
        )

    def _release_unserved(
        self, lease: Lease, envelope: Envelope, error: ModelNotServedError
    ) -> Outcome:
        """Not this node's task: back to the queue for a node that serves the model."""
        count = lease.message.receive_count
        delay_s = backoff_s(
            count, base_s=self.config.backoff_base_s, max_s=self.config.backoff_max_s
        )
        log.warning("task %s released for another node in %.1f s: %s", envelope.id, delay_s, error)
        return self._settle(
            lease, Outcome.UNSERVED, lambda r: self.broker.release(r, delay_s=delay_s)
        )

    def max_receives(self, task: Task) -> int:
        """Receives allowed: the task's setting, never above the queue's (which dead-letters)."""
        if task.max_receives is None:
            return self.broker.max_receives
        return min(task.max_receives, self.broker.max_receives)

    def _store(
        self, envelope: Envelope, task: Task, attempt: Attempt, status: TaskStatus, attempts: int
    ) -> None:
        error = None if attempt.error is None else _error_text(attempt.error)
        result = TaskResult(
            task_id=envelope.id,
            task_name=task.name,
            status=status,
            value=attempt.value,
            error=error,
            attempts=attempts,
            worker=self.name,
            started_at=attempt.started_at,
            finished_at=attempt.finished_at,
            payload=envelope.payload,
            payload_sha256=payload_sha256(envelope.payload),
            models=attempt.models,
        )
        if not self.store.put(result):
            log.info("task %s already had a result; the first one stays", envelope.id)

    def _settle(self, lease: Lease, outcome: Outcome, action: Callable[[str], None]) -> Outcome:
        try:
            lease.settle(action)
        except ReceiptExpiredError as exc:
            log.warning(
                "message %s was redelivered before it was settled: %s", lease.message.id, exc
            )
        except FleetinferError as exc:
            log.warning("could not settle message %s (%s): %s", lease.message.id, outcome, exc)
        return outcome


def _error_text(error: Exception) -> str:
    if isinstance(error, Reject):
        return error.reason
    lines = traceback.format_exception(error)
    return (describe(error) + "\n" + "".join(lines[-6:]))[: MAX_REASON_CHARS * 2]


def _check_json(task: Task, value: Any) -> None:
    try:
        msgspec.json.encode(value)
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(
            f"task {task.name!r} returned a {type(value).__name__}, which is not JSON ({exc}): "
            "return dicts, lists, strings, numbers (convert numpy arrays with .tolist())"
        ) from exc


@contextmanager
def _time_limit(task: Task) -> Iterator[None]:
    """Raise TaskTimeoutError in the task after `task.timeout_s` (main thread only: SIGALRM)."""
    if task.timeout_s is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TaskTimeoutError(
            f"task {task.name!r} ran past its timeout_s={task.timeout_s:g}: make it faster, "
            "raise timeout_s, or split the work into smaller tasks"
        )

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, task.timeout_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)
