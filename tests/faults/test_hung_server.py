"""A hung model server (SIGSTOP stands in for a stuck native call or a swapped-out process).

The workers' model calls fail at their deadline and their tasks are released, not heartbeated;
the agent's probes fail, `/healthz` and `/readyz` say so, and after `--server-probe-failures`
failed probes the agent kills the server and starts another: the node's tasks complete again
after at most the deadline plus one server restart, while the old server is still frozen.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetinfer.node.signals import process_alive
from fleetinfer.queue import open_broker
from fleetinfer.results import TaskStatus, open_store
from fleetinfer.task import send_tasks
from tests.apps.harness import NodeProcess, wait_for
from tests.faults.node import freeze
from tests.helpers.tiny_models import affine_repository

DEADLINE_S = 2.0
PROBE = (
    "--server-probe-interval-s",
    "0.5",
    "--server-probe-timeout-s",
    "1",
    "--server-probe-failures",
    "3",
)
RESTART_BUDGET_S = 3 * (0.5 + 1.0) + 15.0  # failed probes, then a server start on a loaded host
RELEASE_MARGIN_S = 6.0  # the deadline's failures reach /metrics on a loaded host; the visibility
# timeout (120 s) is what a held task would wait for instead


@pytest.mark.parametrize("queue_url", ["sqlite", "redis"], indirect=True)
def test_a_frozen_server_is_replaced_and_the_nodes_tasks_complete_again(
    queue_url: str, results_url: str, tmp_path: Path, short_dir: Path, reaper: list[int]
) -> None:
    models = affine_repository(short_dir / "repo")
    with open_broker(queue_url) as broker, open_store(results_url) as store:
        send_tasks(broker, "model_nap", [{"x": float(i), "s": 0.05} for i in range(400)])
        node = NodeProcess(
            "tests.faults.app:app", queue_url, results_url, "--workers", "2", "--client",
            "shared", "--models", str(models), "--model-deadline-s", str(DEADLINE_S), *PROBE,
            "--grace-s", "10", log_path=tmp_path / "node.log",
        )  # fmt: skip
        try:
            wait_for(lambda: store.count() >= 10, 60, "the node to run tasks")
            assert _status(node, "/readyz")[0] == 200
            old_server = int(node.health()["model_server_pid"])
            reaper.append(old_server)
            freeze(old_server)
            frozen_at = time.monotonic()
            # the calls in flight fail at their deadline: their tasks are released, not held
            wait_for(
                lambda: _failed(node) >= 2,
                DEADLINE_S + RELEASE_MARGIN_S,
                "the held tasks to be released",
            )
            wait_for(lambda: _status(node, "/readyz")[0] == 503, 10, "/readyz to say not ready")
            assert time.monotonic() - frozen_at < DEADLINE_S + RELEASE_MARGIN_S
            done_at_freeze = store.count()
            wait_for(
                lambda: store.count() >= done_at_freeze + 10,
                DEADLINE_S + RESTART_BUDGET_S,
                "tasks to complete again on a new server",
            )
            assert not process_alive(old_server)  # killed while frozen
            code, health = _status(node, "/healthz")
            assert (code, health["status"]) == (200, "ok")
            assert health["model_server_pid"] != old_server
            node.terminate()
            assert node.wait(30) in (0, 7), node.log()
        finally:
            node.close()
        assert store.count(TaskStatus.DEAD) == 0
        assert "did not answer" in node.log_path.read_text()


def _failed(node: NodeProcess) -> float:
    try:
        families = {f.name: f for f in text_string_to_metric_families(node.metrics())}
    except OSError:
        return 0.0
    return sum(
        s.value
        for s in families["fleetinfer_tasks"].samples
        if s.name.endswith("_total") and s.labels["outcome"] == "failed"
    )


def _status(node: NodeProcess, path: str) -> tuple[int, dict[str, object]]:
    url = node.event("ready")["metrics_url"] + path
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
        exc.close()
        return exc.code, body
    except OSError:
        return 0, {}
