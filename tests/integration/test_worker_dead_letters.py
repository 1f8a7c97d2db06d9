"""Bad tasks and bad messages end in the dead-letter queue with a reason; the workers live on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetinfer.cli.common import ExitCode
from fleetinfer.queue import open_broker
from fleetinfer.results import TaskStatus, open_store
from fleetinfer.task import Envelope, send_tasks
from tests.apps.harness import NodeProcess

MAX_BYTES = 4096


@pytest.fixture(params=["sqlite", "redis", "sqs"])
def queue_url(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, unique_name: str
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/queue.db?max_receives=10"
        return
    if request.param == "sqs":
        endpoint = request.getfixturevalue("moto_endpoint")
        yield f"sqs://{unique_name}?region=us-east-1&endpoint_url={endpoint}&max_receives=10"
        return
    url = f"{redis_url}?queue={unique_name}&max_receives=10"
    yield url
    with open_broker(url) as broker:
        broker.purge()


def test_failing_malformed_unknown_and_oversized_messages_are_dead_lettered_with_reasons(
    queue_url: str, tmp_path: Path
) -> None:
    results_url = f"sqlite:///{tmp_path}/results.db"
    with open_broker(queue_url) as broker, open_store(results_url) as store:
        good = send_tasks(broker, "square", [{"x": i} for i in range(5)])
        [failing] = send_tasks(broker, "always_fails", ["segment-1"])
        broker.send_raw('{"v": 1, "id": "broken", "task": ')
        broker.send_raw(Envelope.new("no_such_task", {}).encode())
        broker.send_raw(Envelope.new("square", {"x": 1, "pad": "x" * 2 * MAX_BYTES}).encode())
        node = NodeProcess(
            "tests.apps.jobs:app", queue_url, results_url, "--workers", "2",
            "--exit-when-empty", "--max-message-bytes", str(MAX_BYTES),
            log_path=tmp_path / "node.log",
        )  # fmt: skip
        try:
            assert node.wait(60) == ExitCode.DEAD_LETTERS, node.log()  # some went dead
        finally:
            node.close()
        stopped = node.event("stopped")
        dead = broker.dead_letters()
        reasons = sorted(d.reason.split(":")[0] for d in dead)
        assert reasons == [
            "MalformedMessageError",
            "PayloadTooLargeError",
            "UnknownTaskError",
            "ValueError",
        ], [d.reason for d in dead]
        assert any("'no_such_task'" in d.reason and "registered:" in d.reason for d in dead)
        assert any(f"above the limit of {MAX_BYTES} bytes" in d.reason for d in dead)
        [failure] = [d for d in dead if d.reason.startswith("ValueError")]
        assert failure.reason == "ValueError: cannot process 'segment-1' (receive 3)"
        assert json.loads(failure.body)["id"] == failing
        result = store.get(failing)
        assert result is not None
        assert result.status is TaskStatus.DEAD
        assert result.attempts == 3
        assert all(store.get(i) is not None for i in good)
        assert store.count(TaskStatus.SUCCEEDED) == 5
        assert stopped["restarts"] == 0
        assert stopped["outcomes"]["malformed"] == 3
        assert stopped["outcomes"]["dead"] == 1
        assert stopped["outcomes"]["failed"] == 2
