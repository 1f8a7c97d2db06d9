"""A result names the model versions that answered its task's calls."""

from __future__ import annotations

import pytest

from fleetinfer.errors import ModelDeadlineError
from fleetinfer.node.answered import AnsweredBy


def test_the_newest_loaded_version_before_and_after_names_what_answered() -> None:
    loaded = {"cdnet": (2,), "other": (1, 3)}
    answered = AnsweredBy(lambda name: loaded[name])
    answered.first_use("cdnet")
    answered.first_use("other")
    assert answered.models() == "cdnet@2,other@3"


def test_a_swap_during_the_task_names_both_versions() -> None:
    loaded = {"cdnet": (1,)}
    answered = AnsweredBy(lambda name: loaded[name])
    answered.first_use("cdnet")
    loaded["cdnet"] = (2,)
    assert answered.models() == "cdnet@1|2"


def test_a_task_that_called_no_model_names_none_and_an_unknown_version_names_the_model() -> None:
    assert AnsweredBy(lambda name: ()).models() == ""
    answered = AnsweredBy(lambda name: ())
    answered.first_use("cdnet")
    assert answered.models() == "cdnet"


def test_a_server_that_stops_answering_fails_the_call_and_is_not_asked_again() -> None:
    calls: list[str] = []

    def versions(name: str) -> tuple[int, ...]:
        calls.append(name)
        if len(calls) > 1:
            raise ModelDeadlineError("no reply within the deadline of 2 s")
        return (2,)

    answered = AnsweredBy(versions)
    answered.first_use("cdnet")
    with pytest.raises(ModelDeadlineError):  # the task's call would wait the same way
        answered.first_use("other")
    assert answered.models() == "cdnet@2"  # the lookup after it fails: what was seen
    assert answered.models(look=False) == "cdnet@2"
    assert calls == ["cdnet", "other", "cdnet"]
