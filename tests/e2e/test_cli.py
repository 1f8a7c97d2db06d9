"""The `fleetinfer` command as a user runs it: in a project folder, on the embedded defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest

from fleetinfer.cli.common import ExitCode

SCRIPT = Path(sys.executable).with_name("fleetinfer")

JOBS = dedent(
    """
    from fleetinfer.task import App, Reject

    app = App("shop")

    @app.task
    def double(ctx, payload):
        if payload["n"] < 0:
            raise Reject(f"negative n: {payload['n']}")
        return {"doubled": 2 * payload["n"]}
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's folder holding one task module and a JSONL file of payloads."""
    (tmp_path / "shopjobs.py").write_text(JOBS)
    lines = [json.dumps({"n": n}) for n in (*range(20), -1)]
    (tmp_path / "payloads.jsonl").write_text("\n".join(lines) + "\n\n")
    return tmp_path


def fleetinfer(cwd: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.exists(), f"the fleetinfer script is not installed next to {sys.executable}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETINFER_")}
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_submit_then_run_until_empty_then_status_on_the_embedded_defaults(project: Path) -> None:
    submitted = fleetinfer(project, "submit", "shopjobs:double", "payloads.jsonl", "--json")
    assert submitted.returncode == ExitCode.OK, submitted.stderr
    assert json.loads(submitted.stdout)["submitted"] == 21
    assert (project / ".fleetinfer" / "queue.db").exists()

    ran = fleetinfer(
        project, "run", "shopjobs:app", "--exit-when-empty", "--workers", "2", "--json"
    )
    assert ran.returncode == ExitCode.DEAD_LETTERS, ran.stderr  # the rejected one
    ready, stopped = (json.loads(line) for line in ran.stdout.splitlines())
    assert ready["workers"] == 2
    assert stopped["reason"] == "the queue is empty"
    assert stopped["outcomes"]["succeeded"] == 20
    assert stopped["outcomes"]["rejected"] == 1

    status = fleetinfer(
        project, "status", "--results", "sqlite:///.fleetinfer/results.db", "--json"
    )
    assert status.returncode == ExitCode.OK, status.stderr
    report = json.loads(status.stdout)
    assert (report["visible"], report["in_flight"], report["pending"], report["dead"]) == (
        0,
        0,
        0,
        1,
    )
    assert report["results"] == {"succeeded": 20, "rejected": 1, "dead": 0}

    dead = fleetinfer(project, "dlq", "list", "--json")
    assert [d["reason"] for d in json.loads(dead.stdout)] == ["negative n: -1"]


def test_submit_reads_stdin_and_a_plain_task_name_needs_no_import(project: Path) -> None:
    done = fleetinfer(project, "submit", "double", "-", stdin='{"n": 1}\n{"n": 2}\n')
    assert done.returncode == ExitCode.OK, done.stderr
    assert "submitted 2 task(s) of 'double'" in done.stdout
    status = json.loads(fleetinfer(project, "status", "--json", "--sample-s", "0.2").stdout)
    assert status["visible"] == 2
    assert status["rates_per_s"] == {"pending": 0.0, "dead": 0.0}


def test_dlq_redrive_puts_dead_letters_back_on_the_queue(project: Path) -> None:
    fleetinfer(project, "submit", "nobody_runs_this", "-", stdin='{"n": 1}\n')
    ran = fleetinfer(
        project,
        *("run", "shopjobs:app", "--exit-when-empty", "--workers", "1", "--json"),
        "--allow-dead-letters",
    )
    assert ran.returncode == ExitCode.OK, ran.stderr
    listed = json.loads(fleetinfer(project, "dlq", "list", "--json").stdout)
    assert "no task named 'nobody_runs_this'" in listed[0]["reason"]
    redriven = fleetinfer(project, "dlq", "redrive", "--json")
    assert json.loads(redriven.stdout)["redriven"] == 1
    status = json.loads(fleetinfer(project, "status", "--json").stdout)
    assert (status["visible"], status["dead"]) == (1, 0)


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        (
            ("run", "missing_module:app"),
            None,
            ExitCode.CONFIG,
            "cannot import module 'missing_module'",
        ),
        (
            ("run", "shopjobs:app", "--queue", "ftp://x"),
            None,
            ExitCode.CONFIG,
            "unknown scheme 'ftp'",
        ),
        (
            ("submit", "double", "-"),
            '{"n": 1}\nnot json\n',
            ExitCode.INPUT,
            "line 2 of <stdin> is not JSON",
        ),
        (
            ("submit", "double", "nope.jsonl"),
            None,
            ExitCode.INPUT,
            "cannot read payload file 'nope.jsonl'",
        ),
        (
            ("submit", "shopjobs:app", "-", "--task", "triple"),
            "",
            ExitCode.INPUT,
            "no task named 'triple'",
        ),
        (("dlq", "list", "--limit", "0"), None, ExitCode.INPUT, "--limit must be at least 1"),
        (
            ("run", "shopjobs:app", "--models", "nowhere"),
            None,
            ExitCode.CONFIG,
            "'nowhere' is not a folder",
        ),
    ],
)
def test_bad_input_gets_a_clear_message_and_a_named_exit_code(
    project: Path, args: tuple[str, ...], stdin: str | None, code: ExitCode, message: str
) -> None:
    done = fleetinfer(project, *args, stdin=stdin)
    assert done.returncode == code, done.stderr
    assert message in " ".join(done.stderr.split())


def test_python_dash_m_fleetinfer_is_the_same_command(project: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fleetinfer", "--help"], cwd=project, capture_output=True, text=True
    )
    assert done.returncode == 0
    for command in ("submit", "run", "status", "dlq"):
        assert command in done.stdout
