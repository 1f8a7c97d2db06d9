"""The task API: registration, the envelope on the wire, and target resolution."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fleetinfer.errors import ConfigError, MalformedMessageError, UnknownTaskError
from fleetinfer.task import App, Envelope, Reject, Retry, Task, TaskContext, resolve_target


def _noop(ctx: TaskContext, payload: Any) -> Any:
    return payload


def test_app_task_decorator_registers_under_the_function_name() -> None:
    app = App("a")
    registered = app.task(_noop)
    assert isinstance(registered, Task)
    assert app.get("_noop") is registered
    assert registered.max_receives is None


def test_app_task_decorator_with_options_keeps_them() -> None:
    app = App("a")
    app.task(name="resize", max_receives=2, timeout_s=1.5)(_noop)
    assert app.get("resize") == Task("resize", _noop, 2, 1.5)


def test_two_tasks_with_one_name_is_a_config_error() -> None:
    app = App("a")
    app.task(name="x")(_noop)
    with pytest.raises(ConfigError, match="already has a task named 'x'"):
        app.task(name="x")(lambda ctx, p: p)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_receives": 0}, "max_receives must be an integer >= 1"),
        ({"timeout_s": 0.0}, "timeout_s must be a positive"),
        ({"name": "has space"}, "task name 'has space' is invalid"),
    ],
)
def test_bad_task_options_are_config_errors(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        App("a").task(**options)(_noop)


def test_unknown_task_name_lists_the_registered_ones() -> None:
    app = App("a")
    app.task(_noop)
    with pytest.raises(UnknownTaskError, match=r"no task named 'nope' \(registered: _noop\)"):
        app.get("nope")


def test_envelope_round_trips_through_json() -> None:
    envelope = Envelope.new("square", {"x": 3, "tags": ["a", None]})
    text = envelope.encode()
    assert json.loads(text) == {
        "v": 1,
        "id": envelope.id,
        "task": "square",
        "payload": {"x": 3, "tags": ["a", None]},
    }
    assert Envelope.decode(text) == envelope


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("{not json", "not a task envelope"),
        ('{"v": 1, "task": "x", "payload": 1}', "missing required field `id`"),
        ('{"v": 1, "id": "a", "task": "x", "extra": 1}', "unknown field `extra`"),
        ('{"v": 2, "id": "a", "task": "x"}', "version 2, this worker reads version 1"),
        ("[1, 2]", "not a task envelope"),
    ],
)
def test_bad_bodies_raise_malformed_message_error_from_the_original(body: str, match: str) -> None:
    with pytest.raises(MalformedMessageError, match=match) as info:
        Envelope.decode(body)
    if "version" not in match:
        assert info.value.__cause__ is not None


def test_payload_that_is_not_json_is_refused_at_encode() -> None:
    with pytest.raises(MalformedMessageError, match="not JSON-serializable"):
        Envelope.new("x", {"a": object()}).encode()


def test_retry_and_reject_carry_their_arguments() -> None:
    assert Retry(delay_s=2).delay_s == 2.0
    assert Reject("bad segment").reason == "bad segment"


def test_resolve_target_accepts_an_app_or_a_task() -> None:
    whole = resolve_target("tests.apps.jobs:app")
    assert whole.task is None
    assert "square" in whole.app
    assert "nap" in whole.app
    one = resolve_target("tests.apps.jobs:square")
    assert one.task is not None
    assert one.task_name() == "square"
    assert list(one.app) == [one.task]


def test_an_app_of_many_tasks_has_no_single_task_name() -> None:
    with pytest.raises(ConfigError, match="name one, as module:task_attribute"):
        resolve_target("tests.apps.jobs:app").task_name()


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_colon", "expected 'module:attribute'"),
        ("tests.apps.missing_module:app", "cannot import module 'tests.apps.missing_module'"),
        ("tests.apps.jobs:nothing", "has no attribute 'nothing'"),
        ("tests.apps.jobs:time", "names a module, expected a fleetinfer App or a task"),
        ("tests.apps.broken:app", "failed with RuntimeError: the config file this module reads"),
    ],
)
def test_bad_targets_are_config_errors(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_target(spec)
