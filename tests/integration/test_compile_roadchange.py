"""`fleetinfer compile --calibration roadchange --evaluation roadchange` on a CDNet-shaped model.

An untrained CDNet (exported with torch) keeps this test independent of the shipped weights: it
checks the plumbing (windows in, segment-pipeline metrics and output differences out), not the
quality, which `benchmarks/compile_bench.py` measures on the shipped model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fleetinfer.cli.compile import compile_cmd
from fleetinfer.server.repository import ModelRepository

app = typer.Typer()
app.command("compile")(compile_cmd)  # the only command: invoked without its name


@pytest.fixture(scope="module")
def cdnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from roadchange.model import build_model, export_onnx, variant_config
    from roadchange.train import file_sha256, render_config

    root = tmp_path_factory.mktemp("models")
    config = variant_config("cdnet")
    path = export_onnx(build_model(config, seed=3), root / "cdnet" / "1" / "model.onnx")
    (root / "cdnet" / "config.toml").write_text(render_config("cdnet", config, file_sha256(path)))
    return root / "cdnet"


def test_int8_cdnet_manifest_has_pipeline_metrics_and_output_differences(cdnet_dir: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            str(cdnet_dir),
            "--precision",
            "int8",
            "--calibration",
            "roadchange",
            "--calibration-segments",
            "1",
            "--evaluation",
            "roadchange",
            "--eval-segments",
            "3",
            "--bench-rounds",
            "1",
            "--bench-seconds",
            "0.05",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(result.stdout)["manifest"]
    accuracy = manifest["accuracy"]
    assert accuracy["metric"] == "macc"
    assert {"macc", "f1", "accuracy", "remap_f1", "agreement"} <= set(accuracy["compiled"])
    assert set(accuracy["max_abs_diff"]) == {"changed_logit", "remap_logit", "type_logits"}
    assert manifest["quantization"]["calibration_source"].startswith("roadchange windows")
    assert manifest["quantization"]["calibration_batches"] > 0
    assert (
        ModelRepository(cdnet_dir.parent).config("cdnet").sha256[2] == manifest["artifact_sha256"]
    )
