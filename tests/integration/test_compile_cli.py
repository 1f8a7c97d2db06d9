"""`fleetinfer compile` / `fleetinfer profile` as a user runs them, and the server's hash check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from fleetinfer.cli.common import ExitCode
from fleetinfer.cli.compile import compile_cmd, profile_cmd
from fleetinfer.client import ModelClient
from fleetinfer.errors import IntegrityError
from fleetinfer.server.repository import ModelRepository
from tests.helpers.tiny_conv import tiny_conv_eval_inputs, tiny_conv_inputs, tiny_conv_repository

app = typer.Typer()
app.command("compile")(compile_cmd)
app.command("profile")(profile_cmd)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return tiny_conv_repository(tmp_path / "models") / "tinyconv"


def _npz_folder(folder: Path, batches: list[dict[str, np.ndarray]]) -> Path:  # type: ignore[type-arg]
    folder.mkdir()
    for i, batch in enumerate(batches):
        np.savez(folder / f"{i:03d}.npz", **batch)
    return folder


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _compile_int8(model_dir: Path, tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    calibration = _npz_folder(tmp_path / "cal", tiny_conv_inputs(24))
    evaluation = _npz_folder(
        tmp_path / "eval", tiny_conv_eval_inputs(model_dir / "1" / "model.onnx", 48)
    )
    return _run(
        "compile",
        str(model_dir),
        "--precision",
        "int8",
        "--calibration",
        str(calibration),
        "--evaluation",
        str(evaluation),
        "--bench-rounds",
        "1",
        "--bench-seconds",
        "0.05",
        *extra,
    )


def test_compile_json_reports_the_version_and_its_manifest(model_dir: Path, tmp_path: Path) -> None:
    code, out, err = _compile_int8(model_dir, tmp_path, "--json", "--publish")
    assert code == 0, err
    report = json.loads(out)
    assert report["version"] == 2
    assert report["published"] is True
    manifest = report["manifest"]
    assert manifest["precision"] == "int8"
    assert manifest["accuracy"]["gate"] == "passed"
    assert manifest["performance"]["measured"] is True


def test_zero_calibration_is_refused_with_its_own_exit_code(
    model_dir: Path, tmp_path: Path
) -> None:
    evaluation = _npz_folder(
        tmp_path / "eval", tiny_conv_eval_inputs(model_dir / "1" / "model.onnx", 48)
    )
    code, _, err = _run(
        "compile",
        str(model_dir),
        "--precision",
        "int8",
        "--calibration",
        "zeros",
        "--evaluation",
        str(evaluation),
        "--publish",
        "--no-measure",
    )
    assert code == ExitCode.GATE
    assert "accuracy gate refused to publish" in err
    assert "drop of" in err
    assert ModelRepository(model_dir.parent).versions("tinyconv") == [1]


def test_unknown_precision_exits_with_the_config_code(model_dir: Path) -> None:
    code, _, err = _run("compile", str(model_dir), "--precision", "int4")
    assert code == 3
    assert "unknown precision 'int4'" in err


def test_a_folder_without_config_is_named(tmp_path: Path) -> None:
    code, _, err = _run("compile", str(tmp_path))
    assert code == 3
    assert "not a model folder" in err


def test_tampering_with_a_published_model_makes_the_server_refuse_it(
    model_dir: Path, tmp_path: Path
) -> None:
    code, _, err = _compile_int8(model_dir, tmp_path, "--publish", "--no-measure")
    assert code == 0, err
    repo = model_dir.parent
    client = ModelClient.from_mode("inprocess", repository=repo)
    x = tiny_conv_inputs(1)[0]
    assert client.model("tinyconv").infer(x)["logits"].shape == (1, 4)
    artifact = model_dir / "2" / "model.onnx"
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    fresh = ModelClient.from_mode("inprocess", repository=repo)
    with pytest.raises(IntegrityError, match="sha256"):
        fresh.model("tinyconv").infer(x)


def test_profile_json_picks_and_writes_the_best_configuration(model_dir: Path) -> None:
    code, out, err = _run(
        "profile",
        str(model_dir),
        "--batch-sizes",
        "1,2",
        "--threads",
        "1",
        "--rounds",
        "1",
        "--seconds",
        "0.05",
        "--no-memory",
        "--json",
        "--write",
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["default"]["intra_op_threads"] == 0
    best = report["best"]
    config = ModelRepository(model_dir.parent).config("tinyconv")
    assert config.batching.preferred_batch_sizes == (best["batch_size"],)
    assert report["written"]["runtime"]["intra_op_threads"] == best["intra_op_threads"]


def test_profile_table_marks_the_best_and_the_default(model_dir: Path) -> None:
    code, out, err = _run(
        "profile",
        str(model_dir),
        "--batch-sizes",
        "1",
        "--threads",
        "1",
        "--rounds",
        "1",
        "--seconds",
        "0.05",
        "--no-memory",
    )
    assert code == 0, err
    assert "best (*)" in out
    assert "default" in out
