"""Placement end to end: capability classes through `submit`, `run` and `status`; devices."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fleetinfer.queue import open_broker
from fleetinfer.results import TaskStatus, open_store
from fleetinfer.task import send_tasks
from tests.apps.harness import REPO_ROOT, NodeProcess
from tests.helpers.tiny_models import affine_repository


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetinfer", *args],
        input=stdin, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=False,
    )  # fmt: skip


def _config(path: Path, lines: str) -> Path:
    path.write_text("[node]\n" + lines)
    return path


def _run_until_empty(tmp_path: Path, queue: str, results: str, labels: str, name: str) -> None:
    config = _config(tmp_path / f"{name}.toml", f"labels = {{ {labels} }}\n")
    node = NodeProcess(
        "tests.apps.placement:app", queue, results, "--workers", "1", "--exit-when-empty",
        "--config", str(config), log_path=tmp_path / f"{name}.log",
    )  # fmt: skip
    try:
        assert node.wait(60) == 0, node.log()
    finally:
        node.close()


def _status(queue: str) -> dict[str, Any]:
    done = _cli("status", "--queue", queue, "--json")
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_an_arm64_task_waits_on_an_x86_fleet_and_runs_on_an_arm64_node(tmp_path: Path) -> None:
    queue, results = f"sqlite:///{tmp_path}/q.db?queue=jobs", f"sqlite:///{tmp_path}/r.db"
    arm = _cli("submit", "tests.apps.placement:arm_only", "--queue", queue, "--json", stdin="1\n")
    plain = _cli("submit", "anywhere", "--queue", queue, "--json", stdin="2\n")
    assert arm.returncode == 0, arm.stderr
    assert plain.returncode == 0, plain.stderr
    assert json.loads(arm.stdout)["class"] == "cap-arch-arm64"
    arm_id, plain_id = json.loads(arm.stdout)["ids"][0], json.loads(plain.stdout)["ids"][0]

    _run_until_empty(tmp_path, queue, results, 'arch = "amd64"', "x86")
    with open_store(results) as store:
        assert store.get(plain_id) is not None
        assert store.get(arm_id) is None  # not run on x86
    (waiting,) = _status(queue)["classes"]
    assert waiting["class"] == "cap-arch-arm64"
    assert waiting["requires"] == {"arch": "arm64"}
    assert waiting["visible"] == 1
    assert waiting["unserved"] is True  # no running node satisfies it

    _run_until_empty(tmp_path, queue, results, 'arch = "arm64"', "arm")
    with open_store(results) as store:
        result = store.get(arm_id)
        assert result is not None
        assert result.status is TaskStatus.SUCCEEDED
    (served,) = _status(queue)["classes"]
    assert served["pending"] == 0
    assert served["unserved"] is False


def test_a_bad_requirement_is_one_line_at_submit(tmp_path: Path) -> None:
    queue = f"sqlite:///{tmp_path}/q.db"
    for item, message in (("colour=blue", "unknown capability key 'colour'"),
                          ("arch", "expected KEY=VALUE")):  # fmt: skip
        done = _cli("submit", "anywhere", "--queue", queue, "--requires", item, stdin="1\n")
        assert done.returncode != 0
        assert message in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def _server_pids(node_pid: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{node_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"serve" in cmdline or b"fleetinfer.node.server_child" in cmdline:
                pids.append(int(child))
    return sorted(set(pids))


def _wait_for_results(store_url: str, task_ids: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with open_store(store_url) as store:
        while time.monotonic() < deadline:
            if all(store.get(t) is not None for t in task_ids):
                return
            time.sleep(0.1)


def test_two_cpu_devices_run_two_pinned_servers_that_share_the_workers(tmp_path: Path) -> None:
    repository = affine_repository(tmp_path / "models", versions={1: 3.0})
    queue, results = f"sqlite:///{tmp_path}/q.db", f"sqlite:///{tmp_path}/r.db"
    rows = [[float(i), 1.0, -1.0, 0.5] for i in range(8)]
    with open_broker(queue) as broker:
        task_ids = send_tasks(broker, "affine_where", [{"x": r, "sleep_s": 0.2} for r in rows])
    config = _config(tmp_path / "devices.toml", 'devices = 2\ndevice_kind = "cpu"\n')
    node = NodeProcess(
        "tests.apps.placement:app", queue, results, "--workers", "2", "--client", "shared",
        "--models", str(repository), "--config", str(config), log_path=tmp_path / "node.log",
    )  # fmt: skip
    try:
        node.event("ready")
        servers = _server_pids(node.proc.pid)
        cores = [os.sched_getaffinity(pid) for pid in servers]
        _wait_for_results(results, task_ids, 60)
        node.proc.send_signal(signal.SIGTERM)
        assert node.wait(60) == 0, node.log()
    finally:
        node.close()
    assert len(servers) == 2, node.log()
    assert all(cores), cores
    assert cores[0].isdisjoint(cores[1]), cores
    with open_store(results) as store:
        values = [store.get(t) for t in task_ids]
    assert all(v is not None and v.status is TaskStatus.SUCCEEDED for v in values), node.log()
    answers = [v.value for v in values if v is not None]
    assert [a["y"] for a in answers] == [[3.0 * x + 1.0 for x in r] for r in rows]
    socket_of = {a["pid"]: a["socket"] for a in answers}
    assert len(set(socket_of.values())) == 2, socket_of  # the workers are spread over both
