"""The supervisor: a worker that cannot start stops the node; a killed one is started again."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import msgspec
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


@pytest.fixture(params=[False, True], ids=["fresh", "preload"])
def preload(request: pytest.FixtureRequest) -> bool:
    """Workers as fresh interpreters, or forked from the zygote: the supervisor sees no difference."""
    return bool(request.param)


def test_a_worker_that_cannot_import_its_target_is_fatal_and_not_restarted(
    tmp_path: Path, preload: bool
) -> None:
    supervisor = Supervisor(_config(tmp_path, "no_such_module:app"), preload=preload)
    supervisor.scale_to(1)
    try:
        with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
            supervisor.first_pid(timeout_s=30)
        assert supervisor.restarts == 0
    finally:
        supervisor.stop(grace_s=5)


def test_a_killed_worker_is_restarted_after_its_backoff(tmp_path: Path, preload: bool) -> None:
    events: list[tuple[int, str]] = []
    supervisor = Supervisor(
        _config(tmp_path, "tests.apps.jobs:app"),
        on_event=lambda slot, event: events.append((slot, event["event"])),
        policy=RestartPolicy(base_s=0.2, max_s=1.0),
        preload=preload,
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


def test_forked_workers_share_the_zygotes_pages_and_it_goes_with_them(tmp_path: Path) -> None:
    supervisor = Supervisor(_config(tmp_path, "tests.apps.jobs:app"), preload=True)
    supervisor.scale_to(2)
    try:
        supervisor.first_pid(timeout_s=30)
        wait_for(lambda: supervisor.alive() == 2, 30, "two workers")
        zygote = supervisor.zygote_pid
        assert zygote is not None
        for pid in supervisor.pids():
            assert _parent(pid) == zygote
            # the heap the zygote filled importing numpy and the runtime, shared copy-on-write
            # (a fresh interpreter shares libraries' file pages, but no dirty anonymous ones)
            assert _shared_dirty_kib(pid) > 4 * 1024
    finally:
        supervisor.stop(grace_s=5)
    assert supervisor.alive() == 0
    wait_for(lambda: not Path(f"/proc/{zygote}").exists(), 10, "the zygote to exit")


def test_a_task_module_that_starts_threads_on_import_gets_fresh_workers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = Supervisor(_config(tmp_path, "tests.apps.threaded:app"), preload=True)
    with caplog.at_level("WARNING", logger="fleetinfer.node"):
        supervisor.scale_to(2)
    try:
        wait_for(lambda: supervisor.alive() == 2, 30, "two workers")
        assert not supervisor.preload
        assert supervisor.zygote_pid is None
        for pid in supervisor.pids():
            assert _parent(pid) == os.getpid()  # started by us, not forked by a zygote
        assert "import-time-poller" in caplog.text
        assert "--no-preload" in caplog.text
    finally:
        supervisor.stop(grace_s=5)
    assert supervisor.alive() == 0


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _shared_dirty_kib(pid: int) -> int:
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    return sum(int(line.split()[1]) for line in rollup if line.startswith("Shared_Dirty"))


def test_workers_lower_their_priority_by_the_configured_niceness(
    tmp_path: Path, preload: bool
) -> None:
    config = msgspec.structs.replace(_config(tmp_path, "tests.apps.jobs:app"), nice=7)
    supervisor = Supervisor(config, preload=preload)
    supervisor.scale_to(1)
    try:
        pid = supervisor.first_pid(timeout_s=30)
        expected = os.getpriority(os.PRIO_PROCESS, 0) + 7
        wait_for(lambda: os.getpriority(os.PRIO_PROCESS, pid) == expected, 30, "niceness 7")
    finally:
        supervisor.stop(grace_s=5)
