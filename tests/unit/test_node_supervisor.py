"""The supervisor: a worker that cannot start stops the node; a killed one is started again."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from fleetinfer.errors import ConfigError
from fleetinfer.node.supervisor import RestartPolicy, Supervisor
from fleetinfer.node.worker import WorkerConfig
from tests.apps.harness import wait_for


def _config(tmp_path: Path, target: str) -> WorkerConfig:
    return WorkerConfig(
        target=target,
        queue_url=f"sqlite:///{tmp_path}/q.db",
        results_url=f"sqlite:///{tmp_path}/r.db",
        wait_s=0.1,
    )


def test_a_worker_that_cannot_import_its_target_is_fatal_and_not_restarted(tmp_path: Path) -> None:
    supervisor = Supervisor(_config(tmp_path, "no_such_module:app"))
    supervisor.scale_to(1)
    try:
        with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
            supervisor.first_pid(timeout_s=30)
        assert supervisor.restarts == 0
    finally:
        supervisor.stop(grace_s=5)


def test_a_killed_worker_is_restarted_after_its_backoff(tmp_path: Path) -> None:
    events: list[tuple[int, str]] = []
    supervisor = Supervisor(
        _config(tmp_path, "tests.apps.jobs:app"),
        on_event=lambda slot, event: events.append((slot, event["event"])),
        policy=RestartPolicy(base_s=0.2, max_s=1.0),
    )
    supervisor.scale_to(2)
    try:
        first = supervisor.first_pid(timeout_s=30)
        wait_for(lambda: supervisor.alive() == 2, 30, "two workers")
        os.kill(first, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: (supervisor.poll(), supervisor.restarts)[1] == 1, 30, "a restart")
        assert time.monotonic() - killed_at >= 0.2
        wait_for(lambda: (supervisor.poll(), supervisor.alive())[1] == 2, 30, "two workers again")
        assert first not in supervisor.pids()
        wait_for(lambda: events.count((0, "ready")) == 2, 30, "the new worker 0 to be ready")
    finally:
        supervisor.stop(grace_s=5)
    assert supervisor.alive() == 0
