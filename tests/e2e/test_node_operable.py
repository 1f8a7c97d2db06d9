"""An operable node, run as an operator runs it: a misconfigured node stops before its first
receive with one line and a named exit code (the queue keeps every task), its metrics are
reachable from outside with the queue's depth and the model server's counters, and no password
of its URLs shows on any process's command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetinfer.cli.common import ExitCode
from fleetinfer.queue import open_broker
from fleetinfer.results import open_store
from fleetinfer.task import send_tasks
from tests.apps.harness import REPO_ROOT, wait_for
from tests.helpers.tiny_models import affine_repository, write_config

TASKS = 5
PASSWORD = "s3cret-Pw-o21a"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with a queue holding TASKS affine tasks (the embedded defaults)."""
    with open_broker(f"sqlite:///{tmp_path}/.fleetinfer/queue.db") as broker:
        send_tasks(broker, "affine", [{"x": [1.0, 2.0, 3.0, 4.0]}] * TASKS)
    return tmp_path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETINFER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


def fleetinfer_run(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "fleetinfer", "run", "tests.apps.jobs:app", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env or _env(),
        timeout=60,
    )
    return done, time.monotonic() - started


def assert_queue_holds_every_task(project: Path) -> None:
    with open_broker(f"sqlite:///{project}/.fleetinfer/queue.db") as broker:
        stats = broker.stats()
    assert (stats.visible, stats.in_flight, stats.delayed, stats.dead) == (TASKS, 0, 0, 0)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("--models", "{models}"), "model repository {models}: empty/ has no config.toml"),
        (("--client", "triton"), "--client triton needs the server's address: give --triton-url"),
        (("--client", "shared"), "--client shared without --models needs a running model server"),
    ],
    ids=["repository-without-config", "triton-without-url", "shared-without-models"],
)
def test_a_misconfigured_node_exits_at_once_with_one_line_and_the_queue_keeps_its_tasks(
    project: Path, args: tuple[str, ...], problem: str
) -> None:
    models = affine_repository(project / "models")
    (models / "empty" / "1").mkdir(parents=True)  # a model folder without its config.toml
    args = tuple(a.format(models=models) for a in args)
    done, took_s = fleetinfer_run(
        project, *args, env=_env(FLEETINFER_SOCKET=str(project / "nothing.sock"))
    )
    assert done.returncode == ExitCode.CONFIG, done.stderr
    assert problem.format(models=models) in one_line(done.stderr)
    assert took_s < 10
    assert_queue_holds_every_task(project)


@pytest.mark.parametrize("client", ["inprocess", "shared"])
def test_a_model_that_does_not_load_stops_the_node_with_one_line(
    project: Path, client: str
) -> None:
    write_config(project / "models" / "broken", "broken")
    (project / "models" / "broken" / "1").mkdir()
    (project / "models" / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    done, _ = fleetinfer_run(project, "--models", "models", "--client", client)
    assert done.returncode == ExitCode.CONFIG, done.stderr
    assert "INVALID_PROTOBUF" in one_line(done.stderr)
    assert_queue_holds_every_task(project)


def test_bad_configuration_input_gets_one_line_and_a_named_exit_code(project: Path) -> None:
    secret = project / "password"
    secret.write_text(PASSWORD)
    secret.chmod(0)
    unreadable = f'[node]\nresults = "postgresql://postgres@127.0.0.1:5432/test"\nresults_password_file = "{secret}"\n'
    (project / "unreadable.toml").write_text(unreadable)
    cases = [
        (("--config", "missing.toml"), ExitCode.CONFIG, "configuration file 'missing.toml' does"),
        (("--queue", "redis://127.0.0.1:1/0"), ExitCode.UNAVAILABLE, "cannot be reached"),
        (
            ("--results", f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/test"),
            ExitCode.UNAVAILABLE,
            "postgresql://postgres:***@127.0.0.1:1/test' cannot be reached",
        ),
        (("--workers", "0"), ExitCode.CONFIG, "--workers: Expected int >= 1 (got 0)"),
        (
            ("--client", "triton", "--triton-url", "127.0.0.1:1"),
            ExitCode.UNAVAILABLE,
            "Triton at 127.0.0.1:1 does not answer",
        ),
    ]
    if os.geteuid() != 0:  # root reads any file: there the file is a missing one instead
        cases.append(
            (("--config", "unreadable.toml"), ExitCode.CONFIG, "cannot be read (Permission denied)")
        )
    else:
        secret.unlink()
        cases.append(
            (("--config", "unreadable.toml"), ExitCode.CONFIG, "cannot be read (No such file")
        )
    for args, code, problem in cases:
        done, _ = fleetinfer_run(project, *args)
        assert done.returncode == code, (args, done.stderr)
        line = one_line(done.stderr)
        assert problem in line, args
        assert PASSWORD not in line
    assert_queue_holds_every_task(project)


# -- a running node --------------------------------------------------------------------------


class RunningNode:
    """`fleetinfer run … --json` in the background: its ready line, its metrics, its stop."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str]) -> None:
        self.log_path = cwd / "node.log"
        self._log = self.log_path.open("wb")
        command = [sys.executable, "-m", "fleetinfer", "run", "tests.apps.jobs:app", "--json"]
        self.proc = subprocess.Popen(
            [*command, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=self._log, env=env
        )

    def ready(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, self.log_path.read_text()
        ready: dict[str, Any] = json.loads(line)
        return ready

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._log.close()


@pytest.fixture
def running(project: Path) -> Iterator[list[RunningNode]]:
    nodes: list[RunningNode] = []
    yield nodes
    for node in nodes:
        if node.proc.poll() is None:
            node.stop()


def _results(project: Path) -> int:
    with open_store(f"sqlite:///{project}/.fleetinfer/results.db") as store:
        return store.count()


def _pending(project: Path) -> int:
    with open_broker(f"sqlite:///{project}/.fleetinfer/queue.db") as broker:
        return broker.stats().pending


def test_metrics_on_all_addresses_hold_queue_depth_and_the_model_servers_counters(
    project: Path, running: list[RunningNode]
) -> None:
    models = affine_repository(project / "models")
    node = RunningNode(
        project,
        *("--models", str(models), "--client", "shared", "--workers", "1"),
        *("--metrics-host", "0.0.0.0", "--metrics-port", "0"),
        env=_env(),
    )
    running.append(node)
    port = node.ready()["metrics_url"].rsplit(":", 1)[1]
    wait_for(lambda: _results(project) == TASKS, 60, "every task's result")
    expected = [
        'fleetinfer_queue_messages{queue="default",state="visible"} 0.0',
        'fleetinfer_queue_messages{queue="default",state="dead"} 0.0',
        'fleetinfer_queue_oldest_message_age_seconds{queue="default"} 0.0',
        'nv_inference_request_success{model="affine",version="1"} 5.0',
        'fleetinfer_tasks_total{outcome="succeeded"} 5.0',
    ]
    scraped: list[str] = []

    def scrape_holds_all() -> bool:  # depths are read at most once a second; a busy broker
        with urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=10) as reply:
            scraped[:] = [reply.read().decode()]  # leaves them out of one scrape
        return all(line in scraped[0] for line in expected)

    try:
        wait_for(scrape_holds_all, 30, "a scrape on 127.0.0.2 with depths and server metrics")
    except AssertionError:
        missing = [line for line in expected if line not in scraped[0]]
        raise AssertionError(f"missing {missing} in {scraped[0]}") from None
    assert node.stop() == 0


def test_no_password_of_a_url_shows_on_any_command_line_during_a_run(
    project: Path, running: list[RunningNode]
) -> None:
    with open_broker(f"sqlite:///{project}/.fleetinfer/queue.db") as broker:
        broker.purge()
        send_tasks(broker, "nap", [{"s": 0.5}] * 4)
    results_url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/test"
    node = RunningNode(
        project, "--workers", "2", "--no-preload", env=_env(FLEETINFER_RESULTS=results_url)
    )
    (project / "password").write_text(PASSWORD + "\n")
    (project / "node.toml").write_text(
        '[node]\nresults = "postgresql://postgres@127.0.0.1:5432/test"\n'
        f'results_password_file = "{project / "password"}"\nworkers = 1\n'
    )
    forked = RunningNode(project, "--config", "node.toml", env=_env())
    running.extend([node, forked])
    node.ready()
    forked.ready()
    command_lines = subprocess.run(
        ["ps", "-eo", "args"], capture_output=True, text=True, check=True
    ).stdout
    workers = [line for line in command_lines.splitlines() if "fleetinfer.node" in line]
    assert any("fleetinfer.node.process --config-fd" in line for line in workers), workers
    assert any("fleetinfer.node.zygote" in line for line in workers), workers
    assert PASSWORD not in command_lines
    wait_for(lambda: _pending(project) == 0, 30, "every result stored with the password's URL")
    assert node.stop() == 0
    assert forked.stop() == 0


def test_json_logs_are_one_object_per_line_and_verbose_logs_each_successful_task(
    project: Path,
) -> None:
    with open_broker(f"sqlite:///{project}/.fleetinfer/queue.db") as broker:
        broker.purge()
        task_ids = send_tasks(broker, "square", [{"x": 3}, {"x": 4}])
        send_tasks(broker, "always_fails", ["seg"])  # the worker warns, with the reason
    done, _ = fleetinfer_run(
        project, "-v", "--log-format", "json", "--exit-when-empty", "--workers", "1",
        "--allow-dead-letters",
    )  # fmt: skip
    assert done.returncode == ExitCode.OK, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines()]  # every line is JSON
    settled = {r["task_id"]: r for r in records if r["logger"] == "fleetinfer.tasks"}
    for task_id in task_ids:
        assert settled[task_id]["outcome"] == "succeeded"
        assert settled[task_id]["task"] == "square"
        assert settled[task_id]["level"] == "info"
        assert settled[task_id]["duration_s"] >= 0
    worker_warnings = [r for r in records if r["logger"] == "fleetinfer.worker"]
    assert worker_warnings
    assert {r["level"] for r in worker_warnings} <= {"warning", "error"}
    assert not [r for r in records if "the queue is empty" in r["message"] and r["level"] != "info"]
