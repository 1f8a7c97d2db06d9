"""A result names the model versions that answered its task's calls."""

from __future__ import annotations

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
