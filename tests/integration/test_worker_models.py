"""Tasks reach models through ctx.model(name): the worker creates its model client on first use."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from fleetinfer.queue import open_broker
from fleetinfer.results import TaskStatus, open_store
from fleetinfer.task import send_tasks
from tests.apps.harness import NodeProcess
from tests.helpers.tiny_models import affine_repository


@pytest.mark.parametrize("client", ["inprocess", "shared"])
def test_tasks_call_a_model_of_the_repository_given_with_models(
    tmp_path: Path, client: str
) -> None:
    repository = affine_repository(tmp_path / "models", versions={1: 3.0})
    node_dirs_before = set(Path(tempfile.gettempdir()).glob("fleetinfer-node-*"))
    queue_url, results_url = f"sqlite:///{tmp_path}/q.db", f"sqlite:///{tmp_path}/r.db"
    with open_broker(queue_url) as broker, open_store(results_url) as store:
        rows = [[float(i), 1.0, -1.0, 0.5] for i in range(4)]
        task_ids = send_tasks(broker, "affine", [{"x": row} for row in rows])
        node = NodeProcess(
            "tests.apps.jobs:app", queue_url, results_url, "--workers", "1", "--exit-when-empty",
            "--models", str(repository), "--client", client, log_path=tmp_path / "node.log",
        )  # fmt: skip
        try:
            assert node.wait(60) == 0, node.log()
        finally:
            node.close()
        for task_id, row in zip(task_ids, rows, strict=True):
            result = store.get(task_id)
            assert result is not None, node.log()
            assert result.status is TaskStatus.SUCCEEDED
            assert result.value == {"y": [3.0 * v + 1.0 for v in row]}
            assert result.models == "affine@1"  # the version that answered its calls
    assert set(Path(tempfile.gettempdir()).glob("fleetinfer-node-*")) <= node_dirs_before
