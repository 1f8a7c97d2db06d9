"""The node's logs: JSON lines with the task's fields, levels by meaning, a TTY-only progress line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from fleetinfer.node.logs import JsonFormatter, ProgressLine, configure_logging, log_task

SUCCEEDED = {
    "event": "task",
    "outcome": "succeeded",
    "task": "detect",
    "task_id": "abc",
    "duration_s": 0.25,
}


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_settled_task_is_one_json_object_with_id_task_outcome_and_duration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="fleetinfer.tasks"):
        log_task(SUCCEEDED)
    [record] = caplog.records
    line = JsonFormatter().format(record)
    body = json.loads(line)
    assert "\n" not in line
    assert {k: body[k] for k in ("level", "task_id", "task", "outcome", "duration_s")} == {
        "level": "info",
        "task_id": "abc",
        "task": "detect",
        "outcome": "succeeded",
        "duration_s": 0.25,
    }
    assert body["message"] == "task detect abc succeeded in 0.250 s"


def test_a_successful_task_is_logged_only_when_verbose() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_logging(verbose=False)
        assert not logging.getLogger("fleetinfer.tasks").isEnabledFor(logging.INFO)
        configure_logging(verbose=True, log_format="json")
        assert logging.getLogger("fleetinfer.tasks").isEnabledFor(logging.INFO)
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_a_rejected_task_is_a_warning_and_a_failed_try_is_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="fleetinfer.tasks"):
        log_task({**SUCCEEDED, "outcome": "rejected"})
        log_task({**SUCCEEDED, "outcome": "failed"})  # the worker warned with the reason
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]


def test_the_progress_line_counts_done_and_failed_tasks_on_a_terminal() -> None:
    terminal = FakeTerminal()
    progress = ProgressLine(terminal, interval_s=0.0)
    for outcome in ("succeeded", "succeeded", "dead", "failed"):
        progress.record({**SUCCEEDED, "outcome": outcome})
    assert progress.text().startswith("done 2, failed 1, ")
    assert "done 2, failed 1, " in terminal.getvalue()


def test_the_progress_line_is_silent_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = ProgressLine(stream, interval_s=0.0)
    progress.record(SUCCEEDED)
    progress.close()
    assert stream.getvalue() == ""


def test_the_progress_line_stays_off_when_not_wanted_even_on_a_terminal() -> None:
    terminal = FakeTerminal()
    progress = ProgressLine(terminal, interval_s=0.0, wanted=False)
    progress.record(SUCCEEDED)
    assert terminal.getvalue() == ""
