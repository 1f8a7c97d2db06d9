"""CDNet: shapes, size, FLOP counting, determinism and ONNX export (synthetic tensors only)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from roadchange.model import (
    INPUT_NAME,
    OPSET,
    OUTPUT_NAMES,
    CDNet,
    CDNetConfig,
    build_model,
    count_flops,
    export_onnx,
    parameter_count,
    variant_config,
)

SMALL = CDNetConfig(in_channels=5, input_px=64, widths=(8, 16, 32), layers_per_stage=1)


def test_cdnet_has_between_one_and_five_million_parameters() -> None:
    assert 1_000_000 <= parameter_count(build_model(variant_config("cdnet"), seed=0)) <= 5_000_000


def test_cdnet_l_needs_at_least_ten_times_the_flops_of_cdnet() -> None:
    small = count_flops(build_model(variant_config("cdnet"), seed=0))
    large = count_flops(build_model(variant_config("cdnet-l"), seed=0))
    assert large >= 10 * small


def test_cdnet_h_is_cdnet_l_with_a_neck_whose_weights_outweigh_a_worker() -> None:
    light, heavy = variant_config("cdnet-l"), variant_config("cdnet-h")
    assert (heavy.stem_stride, heavy.widths) == (light.stem_stride, light.widths)
    params = parameter_count(build_model(heavy, seed=0))
    assert 250 * 2**20 <= 4 * params <= 300 * 2**20  # fp32 bytes: 285 MB
    neck = 2 * 256 * 8192 + 8192 + 8192 * 8192 + 8192  # two layers: weights and biases
    heads = (8192 + 1) * (1 + 1 + 7)
    light_neck_and_heads = (512 * 256 + 256) + (256 + 1) * 9
    assert (
        params == parameter_count(build_model(light, seed=0)) - light_neck_and_heads + neck + heads
    )


def test_a_deeper_wider_neck_keeps_the_outputs_shapes() -> None:
    model = build_model(replace(SMALL, neck_width=24, neck_layers=3), seed=0).eval()
    changed, remap, types = model(torch.zeros(2, 5, 64, 64))
    assert (changed.shape, remap.shape, types.shape) == ((2,), (2,), (2, 7))
    assert [m.out_features for m in model.neck if isinstance(m, nn.Linear)] == [24, 24, 24]


def test_flop_counter_matches_a_hand_count_for_one_conv_and_one_linear() -> None:
    model = build_model(
        CDNetConfig(
            in_channels=2, input_px=8, widths=(4,), layers_per_stage=1, stem_stride=4, n_types=3
        ),
        seed=0,
    )
    stem = 2 * 4 * 4 * 4 * (2 * 2)  # 4x4 kernel over 2 channels, 4 out channels, 2x2 outputs
    stage = 3 * 3 * 4 * 4 * (2 * 2)
    heads = 8 * 4 + 4 * 1 + 4 * 1 + 4 * 3  # neck (8 -> 4) and the three heads
    assert count_flops(model) == 2 * (stem + stage + heads)


def test_forward_returns_one_logit_per_window_for_changed_and_remap_and_seven_type_logits() -> None:
    model = build_model(SMALL, seed=0).eval()
    changed, remap, types = model(torch.zeros(3, 5, 64, 64))
    assert changed.shape == (3,)
    assert remap.shape == (3,)
    assert types.shape == (3, 7)


def test_same_seed_builds_the_same_weights_and_another_seed_does_not() -> None:
    a, b, c = (build_model(SMALL, seed=s).state_dict() for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_input_size_not_divisible_by_the_downsampling_is_refused() -> None:
    with pytest.raises(ValueError, match="divisible"):
        CDNetConfig(input_px=100)


def test_unknown_variant_is_refused_with_the_known_names() -> None:
    with pytest.raises(ValueError, match="cdnet-l"):
        variant_config("cdnet-xxl")


def test_config_round_trips_through_a_dict() -> None:
    assert CDNetConfig.from_dict(SMALL.to_dict()) == SMALL


def _randomize_batch_norm(model: CDNet) -> None:
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


def test_onnx_export_matches_pytorch_within_1e_4_for_any_batch_size(tmp_path: Path) -> None:
    model = build_model(SMALL, seed=7)
    _randomize_batch_norm(model)
    path = export_onnx(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = np.random.default_rng(batch).normal(size=(batch, 5, 64, 64)).astype(np.float32)
        got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        with torch.no_grad():
            want = model(torch.from_numpy(x))
        for g, w in zip(got, want, strict=True):
            assert g.shape == tuple(w.shape)
            np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)


def test_onnx_export_declares_opset_17_and_a_dynamic_batch(tmp_path: Path) -> None:
    proto = onnx.load(str(export_onnx(build_model(SMALL, seed=0), tmp_path / "m.onnx")))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= OPSET
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param
    assert not batch_dim.HasField("dim_value")
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
