"""Task ids a user gives: resubmitting a file runs nothing twice; results can be read back."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from textwrap import dedent

import pytest

from fleetinfer.cli.common import ExitCode
from tests.e2e.test_cli import fleetinfer

COUNTING = dedent(
    """
    import os
    from fleetinfer.task import App

    app = App("counting")

    @app.task
    def square(ctx, payload):
        with open("runs.log", "a") as log:  # one line per run of a task
            log.write(ctx.task_id + "\\n")
        return {"square": payload["n"] ** 2}
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "counting.py").write_text(COUNTING)
    lines = [json.dumps({"key": f"item-{n}", "n": n}) for n in range(12)]
    (tmp_path / "items.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.fixture(params=["sqlite", "redis"])
def queue_url(request: pytest.FixtureRequest, project: Path, unique_name: str) -> str:
    if request.param == "sqlite":
        return "sqlite:///.fleetinfer/queue.db"
    redis_url: str = request.getfixturevalue("redis_url")
    return f"{redis_url}?queue={unique_name}"


def submit_twice_then_run(project: Path, queue: str) -> list[str]:
    ids: list[str] = []
    for _ in range(2):
        sent = fleetinfer(
            project, "submit", "counting:square", "items.jsonl", "--id-field", "key",
            "--queue", queue, "--json",
        )  # fmt: skip
        assert sent.returncode == ExitCode.OK, sent.stderr
        ids = json.loads(sent.stdout)["ids"]
    ran = fleetinfer(
        project, "run", "counting:app", "--queue", queue, "--workers", "2", "--exit-when-empty",
    )  # fmt: skip
    assert ran.returncode == ExitCode.OK, ran.stderr
    return ids


def test_resubmitting_a_file_with_id_field_runs_each_task_once(
    project: Path, queue_url: str
) -> None:
    ids = submit_twice_then_run(project, queue_url)
    assert ids == [f"item-{n}" for n in range(12)]
    runs = (project / "runs.log").read_text().split()
    assert sorted(runs) == sorted(ids)  # queued twice, run once each

    submit_twice_then_run(project, queue_url)  # after they succeeded: still no second run
    assert sorted((project / "runs.log").read_text().split()) == sorted(ids)

    got = fleetinfer(project, "results", "get", "item-3", "--json")
    assert got.returncode == ExitCode.OK, got.stderr
    record = json.loads(got.stdout)
    assert (record["status"], record["value"], record["payload"]) == (
        "succeeded",
        {"square": 9},
        {"key": "item-3", "n": 3},
    )


def test_ids_from_the_payload_are_the_same_on_every_submit(project: Path) -> None:
    sent = [
        fleetinfer(
            project, "submit", "counting:square", "items.jsonl", "--id-from-payload", "--json"
        )
        for _ in range(2)
    ]
    assert all(s.returncode == ExitCode.OK for s in sent), sent[0].stderr
    first, second = (json.loads(s.stdout)["ids"] for s in sent)
    assert first == second
    assert len(set(first)) == 12
    status = fleetinfer(project, "status", "--json")
    assert json.loads(status.stdout)["visible"] == 12


def test_export_of_a_thousand_task_run_as_csv_has_a_row_with_payload_and_value_per_task(
    project: Path,
) -> None:
    lines = [json.dumps({"key": f"k{n:04d}", "n": n}) for n in range(1000)]
    (project / "many.jsonl").write_text("\n".join(lines) + "\n")
    sent = fleetinfer(project, "submit", "counting:square", "many.jsonl", "--id-field", "key")
    assert sent.returncode == ExitCode.OK, sent.stderr
    ran = fleetinfer(project, "run", "counting:app", "--workers", "2", "--exit-when-empty")
    assert ran.returncode == ExitCode.OK, ran.stderr

    done = fleetinfer(project, "results", "export", "--format", "csv", "--out", "results.csv")
    assert done.returncode == ExitCode.OK, done.stderr
    with (project / "results.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 1000
    for row in rows:
        payload = json.loads(row["payload"])
        assert row["task_id"] == payload["key"]
        assert json.loads(row["value"]) == {"square": payload["n"] ** 2}
        assert row["status"] == "succeeded"

    jsonl = fleetinfer(project, "results", "export", "--status", "succeeded", "--task", "square")
    assert len(jsonl.stdout.splitlines()) == 1000
    parquet = fleetinfer(project, "results", "export", "-f", "parquet", "-o", "results.parquet")
    assert parquet.returncode == ExitCode.OK, parquet.stderr
    import pyarrow.parquet as pq

    table = pq.read_table(project / "results.parquet")
    assert table.num_rows == 1000
    assert set(table.column("payload_sha256").to_pylist()) != {None}


def test_bad_input_gets_one_line_and_exit_code_4(project: Path) -> None:
    (project / "nokey.jsonl").write_text('{"key": "a", "n": 1}\n{"n": 2}\n')
    (project / "twice.jsonl").write_text('{"key": "a", "n": 1}\n{"key": "a", "n": 2}\n')
    (project / "latin1.jsonl").write_bytes('{"name": "Zürich"}\n'.encode("latin-1"))
    cases = {
        ("submit", "counting:square", "nokey.jsonl", "--id-field", "key"): "has no field 'key'",
        ("submit", "counting:square", "twice.jsonl", "--id-field", "key"): "same task id 'a'",
        ("submit", "counting:square", "latin1.jsonl"): "line 1 of latin1.jsonl is not UTF-8",
        ("results", "export", "--out", "/proc/nowhere/results.csv"): "cannot write the export",
        ("results", "get", "never-submitted"): "no result for task id 'never-submitted'",
        ("results", "export", "--status", "finished"): "not one of succeeded",
        ("model", "init", "missing.onnx", "--repo", "models"): "no such file",
        ("model", "init", "items.jsonl", "--repo", "models"): "is not an ONNX model",
    }
    for args, message in cases.items():
        done = fleetinfer(project, *args)
        assert done.returncode == ExitCode.INPUT, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr
    status = fleetinfer(project, "status", "--json")
    assert json.loads(status.stdout)["visible"] == 0  # nothing half-submitted
