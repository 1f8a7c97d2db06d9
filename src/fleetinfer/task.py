"""Task registration and the task envelope: what users write, and what travels on the queue.

    app = App("roadchange")

    @app.task(max_receives=3, timeout_s=600)
    def detect(ctx: TaskContext, payload: dict) -> dict:
        handle = ctx.model("cdnet")          # loaded lazily, once per worker process
        ...
        return {"changed": True}

A task is a function of `(ctx, payload)` returning a JSON value. User code steers the outcome
with two control-flow signals: `Retry(delay_s=...)` (try again later, no error counted against
the input) and `Reject(reason)` (the input is bad: no retry, straight to the dead-letter queue).
Any other exception is a failure, retried with backoff until the task's `max_receives`.

On the wire a task is a JSON envelope `{"v": 1, "id": ..., "task": ..., "payload": ...}`; `id` is
the task id, which keys the result and survives redelivery and redrive.
"""

from __future__ import annotations

import importlib
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, overload

import msgspec

from fleetinfer.errors import (
    ConfigError,
    InputError,
    MalformedMessageError,
    UnknownTaskError,
)
from fleetinfer.untrusted import check_json_depth, decode_json

if TYPE_CHECKING:
    from fleetinfer.client import ModelHandle
    from fleetinfer.queue.base import Broker

ENVELOPE_VERSION = 1
_TASK_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-:")


class Retry(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by task code: put the task back and run it again after `delay_s` seconds."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(f"task asked to be retried in {delay_s:g} s")
        self.delay_s = float(delay_s)


class Reject(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by task code: the input is bad; store a REJECTED result and dead-letter it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One task on the wire: `{"v": 1, "id": task id, "task": task name, "payload": JSON}`."""

    v: int
    id: str
    task: str
    payload: Any = None

    @classmethod
    def new(cls, task: str, payload: Any, *, task_id: str | None = None) -> Envelope:
        """An envelope for `task` with a fresh task id (or the one given)."""
        return cls(v=ENVELOPE_VERSION, id=task_id or uuid.uuid4().hex, task=task, payload=payload)

    def encode(self) -> str:
        """The JSON text of this envelope."""
        try:
            data = msgspec.json.encode(self)
        except (TypeError, ValueError, RecursionError, msgspec.EncodeError) as exc:
            raise MalformedMessageError(
                f"payload of task {self.task!r} is not JSON-serializable ({exc}): "
                "send plain dicts, lists, strings and numbers"
            ) from exc
        check_json_depth(data, what=f"the envelope of task {self.task!r}")  # decodable
        return data.decode("utf-8")

    @classmethod
    def decode(cls, text: str | bytes) -> Envelope:
        """Parse a message body; anything but a version-1 envelope raises MalformedMessageError
        (hostile bodies too: nesting deeper than `MAX_JSON_DEPTH`, numbers out of range, bad
        UTF-8, any failure of the parser), so the worker dead-letters it on its first receive."""
        envelope = decode_json(
            text,
            what="message",
            into=cls,
            expected='a task envelope {"v": 1, "id": "<task id>", "task": "<name>", "payload": ...}',
        )
        if envelope.v != ENVELOPE_VERSION:
            raise MalformedMessageError(
                f"task envelope {envelope.id!r} has version {envelope.v}, this worker reads "
                f"version {ENVELOPE_VERSION}: upgrade the worker or the producer"
            )
        return envelope


class TaskFunction(Protocol):
    """What `@app.task` decorates: `(ctx, payload) -> JSON value`."""

    __name__: str

    def __call__(self, ctx: TaskContext, payload: Any, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Task:
    """A registered task: its name, its function, and how the worker treats failures."""

    name: str
    fn: TaskFunction
    max_receives: int | None = None
    timeout_s: float | None = None
    requires: dict[str, str] = field(default_factory=dict, hash=False)  # placement

    def __post_init__(self) -> None:
        check_task_name(self.name)
        if self.requires:
            from fleetinfer.node.attributes import check_requirements

            try:
                check_requirements(self.requires, what=f"task {self.name!r} requires")
            except InputError as exc:
                raise ConfigError(str(exc)) from exc
        if self.max_receives is not None and (
            isinstance(self.max_receives, bool) or self.max_receives < 1
        ):
            raise ConfigError(
                f"task {self.name!r}: max_receives must be an integer >= 1 or None (the queue's "
                f"setting), got {self.max_receives!r}"
            )
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ConfigError(
                f"task {self.name!r}: timeout_s must be a positive number of seconds or None, "
                f"got {self.timeout_s!r}"
            )

    def envelope(self, payload: Any, *, task_id: str | None = None) -> Envelope:
        """The envelope that runs this task on `payload`."""
        return Envelope.new(self.name, payload, task_id=task_id)

    def __call__(self, ctx: TaskContext, payload: Any) -> Any:
        return self.fn(ctx, payload)


def check_task_name(name: object) -> None:
    """A task name is a non-empty string of letters, digits and `_ . - :`, at most 200 chars."""
    if not isinstance(name, str) or not name or len(name) > 200 or set(name) - _TASK_NAME_CHARS:
        raise ConfigError(
            f"task name {name!r} is invalid: expected 1 to 200 letters, digits or '_.-:'"
        )


class App:
    """A named registry of tasks; a worker runs the tasks of one app."""

    def __init__(self, name: str) -> None:
        check_task_name(name)
        self.name = name
        self._tasks: dict[str, Task] = {}

    @overload
    def task(self, fn: TaskFunction, /) -> Task: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        max_receives: int | None = None,
        timeout_s: float | None = None,
        requires: dict[str, str] | None = None,
    ) -> Callable[[TaskFunction], Task]: ...

    def task(
        self,
        fn: TaskFunction | None = None,
        *,
        name: str | None = None,
        max_receives: int | None = None,
        timeout_s: float | None = None,
        requires: dict[str, str] | None = None,
    ) -> Task | Callable[[TaskFunction], Task]:
        """Register a function as a task: `@app.task` or `@app.task(name=..., ...)`;
        `requires={"arch": "arm64"}` sends it to the nodes that have those capabilities."""

        def register(f: TaskFunction) -> Task:
            registered = Task(name or f.__name__, f, max_receives, timeout_s, dict(requires or {}))
            self.add(registered)
            return registered

        return register if fn is None else register(fn)

    def add(self, task: Task) -> None:
        """Register an existing `Task`; a second task of the same name is a `ConfigError`."""
        if task.name in self._tasks and self._tasks[task.name] is not task:
            raise ConfigError(
                f"app {self.name!r} already has a task named {task.name!r}: give one of them "
                "another name with @app.task(name=...)"
            )
        self._tasks[task.name] = task

    def get(self, name: str) -> Task:
        """The task called `name`; an unregistered name raises `UnknownTaskError`."""
        try:
            return self._tasks[name]
        except KeyError:
            known = ", ".join(sorted(self._tasks)) or "none"
            raise UnknownTaskError(
                f"app {self.name!r} has no task named {name!r} (registered: {known}): "
                "check the producer's task name or deploy a worker that registers it"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        return f"App({self.name!r}, tasks={sorted(self._tasks)})"


def single_task_app(task: Task) -> App:
    """An app holding exactly one task (what `fleetinfer run module:task` runs)."""
    app = App(task.name)
    app.add(task)
    return app


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a running task can see and do besides its payload."""

    task_id: str
    task_name: str
    receive_count: int
    logger: logging.Logger
    _heartbeat: Callable[[], None] = field(repr=False)
    _models: Callable[[str], ModelHandle] = field(repr=False)

    def heartbeat(self) -> None:
        """Extend the message's visibility now (the worker also does it on a timer)."""
        self._heartbeat()

    def model(self, name: str) -> ModelHandle:
        """A handle on model `name`; the worker's model client is created on first use."""
        return self._models(name)


@dataclass(frozen=True, slots=True)
class Target:
    """What `module:attribute` names: an app, and the one task wanted if it named a task."""

    app: App
    task: Task | None

    def task_name(self) -> str:
        """The one task's name; an app with several tasks needs `module:app` plus a task name."""
        if self.task is not None:
            return self.task.name
        if len(self.app) == 1:
            return next(iter(self.app)).name
        raise ConfigError(
            f"app {self.app.name!r} has {len(self.app)} tasks "
            f"({', '.join(t.name for t in self.app)}): name one, as module:task_attribute"
        )


def resolve_target(spec: str) -> Target:
    """Import `module:attribute`, where the attribute is an `App` or a `Task`."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(
            f"{spec!r} is not a task target: expected 'module:attribute', for example "
            "'roadchange.pipeline:app' or 'myjobs:resize'"
        )
    module = _import_module(spec, module_name)
    value = _get_attribute(spec, module, attribute)
    if isinstance(value, App):
        return Target(value, None)
    if isinstance(value, Task):
        return Target(single_task_app(value), value)
    raise ConfigError(
        f"{spec!r} names a {type(value).__name__}, expected a fleetinfer App or a task "
        "(a function decorated with @app.task)"
    )


def _import_module(spec: str, module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise ConfigError(_import_failed(spec, module_name, exc)) from exc
        raise ConfigError(
            f"cannot import module {module_name!r} of target {spec!r} ({exc}): check the name "
            "and that its folder is on PYTHONPATH (or run from the folder that holds it)"
        ) from exc
    except Exception as exc:  # user code: a SyntaxError, or an error raised at import time
        raise ConfigError(_import_failed(spec, module_name, exc)) from exc


def _import_failed(spec: str, module_name: str, exc: BaseException) -> str:
    return (
        f"importing module {module_name!r} of target {spec!r} failed with "
        f"{type(exc).__name__}: {exc}; fix the module (run `python -c 'import {module_name}'` "
        "to see the traceback)"
    )


def _get_attribute(spec: str, module: Any, attribute: str) -> Any:
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ConfigError(
                f"target {spec!r}: module {module.__name__!r} has no attribute {attribute!r}"
            ) from None
    return value


def send_tasks(
    broker: Broker,
    task_name: str,
    payloads: Iterable[Any],
    *,
    batch_size: int = 100,
    task_ids: Iterable[str] | None = None,
    requires: dict[str, str] | None = None,
) -> list[str]:
    """Enqueue one task per payload, `batch_size` per round trip; returns the task ids.

    With `requires` (capability key to value, e.g. `{"arch": "arm64"}`) the tasks go to the queue
    of that capability class, next to `broker`'s queue, which only satisfying nodes consume
    (`fleetinfer.queue.classes`); an unknown key or bad value is an `InputError`.

    Without `task_ids` each task gets a fresh random id. With them (one per payload) the id is
    the idempotency key end to end: it is the message's deduplication id, so a task still in
    the queue is not queued twice, and the worker does not run a task whose result succeeded.
    """
    check_task_name(task_name)
    if requires:
        from fleetinfer.queue.classes import open_class_broker

        with open_class_broker(broker, requires) as class_broker:
            return send_tasks(
                class_broker, task_name, payloads, batch_size=batch_size, task_ids=task_ids
            )
    if task_ids is None:
        envelopes: Iterable[Envelope] = (Envelope.new(task_name, p) for p in payloads)
    else:
        envelopes = _envelopes_with_ids(task_name, payloads, task_ids)
    sent: list[str] = []
    batch: list[Envelope] = []
    for envelope in envelopes:
        batch.append(envelope)
        if len(batch) >= batch_size:
            sent += _send_envelopes(broker, batch, dedup=task_ids is not None)
            batch = []
    return sent + _send_envelopes(broker, batch, dedup=task_ids is not None)


def _envelopes_with_ids(
    task_name: str, payloads: Iterable[Any], task_ids: Iterable[str]
) -> Iterator[Envelope]:
    for payload, task_id in zip(payloads, task_ids, strict=True):
        if not isinstance(task_id, str) or not task_id:
            raise InputError(f"a task id must be a non-empty string, got {task_id!r}")
        yield Envelope.new(task_name, payload, task_id=task_id)


def _send_envelopes(broker: Broker, envelopes: list[Envelope], *, dedup: bool) -> list[str]:
    if envelopes:
        bodies = [e.encode() for e in envelopes]
        dedup_ids = [e.id for e in envelopes] if dedup else None
        broker.send_raw_batch(bodies, dedup_ids=dedup_ids)
    return [e.id for e in envelopes]
