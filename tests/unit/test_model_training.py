"""Training loop, threshold choice and the model-repository files, on synthetic windows."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from fleetinfer.server.repository import file_sha256, parse_config
from roadchange.model import CDNetConfig, build_model
from roadchange.train import (
    TrainConfig,
    WindowSet,
    binary_metrics,
    choose_threshold,
    fit,
    render_config,
    window_logits,
)

SMALL = CDNetConfig(in_channels=2, input_px=32, widths=(8, 16), layers_per_stage=1)


def _synthetic_windows(n: int, seed: int) -> WindowSet:
    """Changed windows carry a bright 4x4 blob somewhere in channel 1; the others do not."""
    rng = np.random.default_rng(seed)
    rasters = rng.uniform(0.0, 0.2, size=(n, 2, 32, 32))
    changed = (np.arange(n) % 2).astype(np.float32)
    for i in np.flatnonzero(changed):
        r, c = rng.integers(0, 28, size=2)
        rasters[i, 1, r : r + 4, c : c + 4] += 0.8
    change_type = np.where(changed > 0, 2, 0).astype(np.int64)
    quantized = np.round(np.minimum(rasters, 1.0) * 255).astype(np.uint8)
    return WindowSet(quantized, changed, changed.copy(), change_type)


def _accuracy(model: torch.nn.Module, data: WindowSet) -> float:
    logits = window_logits(model, data.rasters.astype(np.float32) / 255.0)  # type: ignore[arg-type]
    return float(((logits > 0) == (data.changed > 0.5)).mean())


def test_fit_learns_to_find_a_local_blob_that_an_untrained_model_cannot() -> None:
    torch.manual_seed(0)
    config = TrainConfig(steps=120, batch_size=32, learning_rate=5e-3, threads=1)
    train_set, test_set = _synthetic_windows(512, seed=1), _synthetic_windows(128, seed=2)
    model = build_model(SMALL, seed=3)
    before = _accuracy(model, test_set)
    history = fit(model, train_set, config, log=lambda _line: None)
    assert history[-1]["loss"] < history[0]["loss"]
    assert before < 0.75
    assert _accuracy(model, test_set) > 0.95


def test_fit_is_reproducible_from_the_seed() -> None:
    config = TrainConfig(steps=5, batch_size=16, threads=1)
    data = _synthetic_windows(64, seed=1)
    weights = []
    for _ in range(2):
        model = build_model(SMALL, seed=3)
        fit(model, data, config, log=lambda _line: None)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_threshold_maximises_the_mean_macc_over_presets() -> None:
    easy = (np.array([-3.0, -2.0, 1.0, 2.0]), np.array([False, False, True, True]))
    hard = (np.array([-1.0, 0.5, 0.8, 3.0]), np.array([False, False, True, True]))
    threshold = choose_threshold([easy, hard])
    assert 0.5 < threshold < 0.8
    assert binary_metrics(*hard, threshold)["macc"] == 1.0
    assert binary_metrics(*easy, threshold)["macc"] == 1.0


@pytest.mark.parametrize("seed", [900, 424242, 434343, 999])
def test_training_seeds_outside_the_training_range_are_refused(seed: int) -> None:
    with pytest.raises(ValueError, match="training seed"):
        TrainConfig(seed=seed)


def test_rendered_config_is_read_by_the_fleetinfer_repository_loader(tmp_path: Path) -> None:
    folder = tmp_path / "cdnet"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(b"weights")
    digest = file_sha256(folder / "1" / "model.onnx")
    (folder / "config.toml").write_text(render_config("cdnet", SMALL, digest))
    config = parse_config(folder / "config.toml", expected_name="cdnet")
    assert [i.name for i in config.inputs] == ["raster"]
    assert config.inputs[0].shape == (-1, 2, 32, 32)
    assert [(o.name, o.shape) for o in config.outputs] == [
        ("changed_logit", (-1,)),
        ("remap_logit", (-1,)),
        ("type_logits", (-1, 7)),
    ]
    assert config.sha256 == {1: digest}
    assert config.batching.preferred_batch_sizes == (8,)  # as the shipped models: run in slices
    assert tomllib.loads((folder / "config.toml").read_text())["max_batch_size"] == 64
