"""The `roadchange` command as a user runs it (`python -m roadchange ...` in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from fleetinfer.server.repository import ModelRepository, verify_artifact
from roadchange.pipeline import OnnxModel, check_segment

SEED = 525252  # >= 100000: never a training seed


def roadchange(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roadchange", *args],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=cwd,
        check=False,
    )


def test_generate_then_eval_json_prints_one_object_with_the_metrics(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = roadchange(
        "generate",
        "--preset",
        "default",
        "--segments",
        "6",
        "--seed",
        str(SEED),
        "--out",
        str(data),
    )
    assert done.returncode == 0, done.stderr
    done = roadchange("eval", "--data", str(data), "--json", "--threads", "2")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for key in (
        "segments",
        "failed",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "macc",
        "remap_f1",
        "per_type_recall",
        "seconds",
    ):
        assert key in report
    assert report["segments"] == 6
    assert report["failed"] == 0
    assert 0.0 <= report["macc"] <= 1.0


def test_eval_names_a_corrupted_file_counts_it_and_exits_with_segments_failed(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    assert (
        roadchange(
            "generate", "--segments", "3", "--seed", str(SEED + 1), "--out", str(data)
        ).returncode
        == 0
    )
    victim = sorted(data.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:50])
    done = roadchange("eval", "--data", str(data), "--json")
    assert done.returncode == 3
    assert victim.name in done.stderr
    report = json.loads(done.stdout)
    assert (report["segments"], report["failed"]) == (2, 1)


def test_eval_of_a_missing_folder_is_a_clear_error_with_exit_code_2(tmp_path: Path) -> None:
    done = roadchange("eval", "--data", str(tmp_path / "absent"))
    assert done.returncode == 2
    assert "absent" in done.stderr


def test_train_smoke_really_trains_a_small_model_and_exports_a_usable_repository(
    tmp_path: Path,
) -> None:
    out = tmp_path / "repo"
    done = roadchange(
        "train",
        "--out",
        str(out),
        "--seed",
        "1000",
        "--segments",
        "2",
        "--val-segments",
        "2",
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--widths",
        "8,16,32,64",
        "--threads",
        "2",
    )
    assert done.returncode == 0, done.stderr
    assert "step 4/4 loss" in done.stderr
    repository = ModelRepository(out)
    version = repository.resolve("cdnet")
    verify_artifact(version)
    card = (out / "cdnet" / "MODEL_CARD.md").read_text()
    assert version.path.name == "model.onnx"
    assert "seed 1000" in card.lower()
    data = tmp_path / "data"
    assert (
        roadchange(
            "generate", "--segments", "1", "--seed", str(SEED + 2), "--out", str(data)
        ).returncode
        == 0
    )
    decision = check_segment(next(data.iterdir()), OnnxModel(version.path))
    assert np.isfinite(decision.score_logit)
    assert decision.windows >= 1
