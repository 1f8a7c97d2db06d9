"""Units of fleetinfer.compile: targets, config editing, calibration, comparison, manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetinfer.compile.accuracy import Comparison, compare_outputs, gate
from fleetinfer.compile.calibration import (
    ArraySource,
    CalibrationReader,
    NpzSource,
    collect,
    inputs_sha256,
)
from fleetinfer.compile.configfile import update_config
from fleetinfer.compile.manifest import (
    AccuracyInfo,
    Manifest,
    PerformanceInfo,
    QuantizationInfo,
    read_manifest,
    write_manifest,
)
from fleetinfer.compile.targets import (
    ARM_BF16_FASTMATH,
    TARGETS,
    get_target,
    int8_reduce_range,
    session_config_entries,
    unavailable_reason,
)
from fleetinfer.errors import CalibrationError, ConfigError, ModelConfigError, UnsupportedBuildError
from fleetinfer.server.repository import parse_config
from tests.helpers.tiny_conv import tiny_conv_inputs, tiny_conv_repository


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return tiny_conv_repository(tmp_path) / "tinyconv" / "config.toml"


def test_unknown_target_error_lists_the_known_targets() -> None:
    with pytest.raises(UnsupportedBuildError, match="cpu-arm64"):
        get_target("tpu", "fp32")


def test_fp16_on_an_x86_cpu_target_is_refused_with_the_reason() -> None:
    with pytest.raises(UnsupportedBuildError, match="FP16 is for GPUs"):
        get_target("cpu-avx512", "fp16")


def test_bf16_on_arm_is_a_recorded_session_setting() -> None:
    target = get_target("cpu-arm64", "bf16")
    assert session_config_entries(target, "bf16") == {ARM_BF16_FASTMATH: "1"}
    assert session_config_entries(target, "fp32") == {}


def test_gpu_targets_say_which_provider_this_build_lacks() -> None:
    reason = unavailable_reason(TARGETS["tensorrt"])
    assert reason is not None
    assert "TensorrtExecutionProvider" in reason


def test_vnni_targets_quantize_with_full_range() -> None:
    assert int8_reduce_range(TARGETS["cpu-avx512"]) is False
    assert int8_reduce_range(TARGETS["cpu-arm64"]) is False


def test_config_edit_replaces_a_key_and_keeps_comments(config_path: Path) -> None:
    config_path.write_text(
        config_path.read_text() + "\n# tuned by hand\n[runtime]\nintra_op_threads = 4\n"
    )
    update_config(config_path, {"runtime": {"intra_op_threads": 2}, "instances": {"count": 3}})
    text = config_path.read_text()
    assert "# tuned by hand" in text
    config = parse_config(config_path)
    assert (config.runtime.intra_op_threads, config.instance_count) == (2, 3)


def test_config_edit_refuses_an_inline_table_and_leaves_the_file_alone(config_path: Path) -> None:
    config_path.write_text(
        config_path.read_text().replace(
            "max_batch_size = 16", "max_batch_size = 16\nruntime = { intra_op_threads = 1 }"
        )
    )
    before = config_path.read_text()
    with pytest.raises(ModelConfigError, match="by hand"):
        update_config(config_path, {"runtime": {"intra_op_threads": 2}})
    assert config_path.read_text() == before


def test_config_edit_that_would_make_the_config_invalid_is_refused(config_path: Path) -> None:
    before = config_path.read_text()
    with pytest.raises(ModelConfigError, match="invalid"):
        update_config(config_path, {"version_policy": {"policy": "specific", "versions": []}})
    assert config_path.read_text() == before


def test_calibration_inputs_with_a_wrong_name_are_refused(config_path: Path) -> None:
    config = parse_config(config_path)
    with pytest.raises(CalibrationError, match="takes \\['x'\\]"):
        collect(
            ArraySource([{"image": np.zeros((1, 3, 16, 16), np.float32)}]),
            config,
            what="calibration",
        )


def test_calibration_inputs_with_a_wrong_shape_are_refused(config_path: Path) -> None:
    config = parse_config(config_path)
    with pytest.raises(CalibrationError, match="expects \\[-1, 3, 16, 16\\]"):
        collect(
            ArraySource([{"x": np.zeros((1, 3, 8, 8), np.float32)}]), config, what="calibration"
        )


def test_an_empty_calibration_source_is_refused(config_path: Path) -> None:
    with pytest.raises(CalibrationError, match="at least one"):
        collect(ArraySource([]), parse_config(config_path), what="calibration")


def test_calibration_hash_changes_with_the_data() -> None:
    a, b = tiny_conv_inputs(2, seed=1), tiny_conv_inputs(2, seed=2)
    assert inputs_sha256(a) == inputs_sha256(tiny_conv_inputs(2, seed=1))
    assert inputs_sha256(a) != inputs_sha256(b)


def test_npz_folder_is_read_in_name_order(tmp_path: Path, config_path: Path) -> None:
    batches = tiny_conv_inputs(3)
    for i, batch in enumerate(batches):
        np.savez(tmp_path / f"{i:02d}.npz", **batch)
    read = collect(NpzSource(tmp_path), parse_config(config_path), what="calibration")
    assert [np.array_equal(r["x"], b["x"]) for r, b in zip(read, batches, strict=True)] == [
        True
    ] * 3


def test_npz_source_names_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"expected an \.npz file"):
        NpzSource(tmp_path / "missing.npz")


def test_calibration_reader_ends_with_none() -> None:
    reader = CalibrationReader(tiny_conv_inputs(2))
    assert [reader.get_next() is not None for _ in range(3)] == [True, True, False]


def test_comparison_counts_flipped_decisions_and_the_largest_difference() -> None:
    source = [{"y": np.array([[2.0, 1.0], [0.0, 3.0]])}]
    compiled = [{"y": np.array([[2.0, 2.5], [0.0, 2.9]])}]
    diffs, agreement = compare_outputs(source, compiled)
    assert diffs == {"y": pytest.approx(1.5)}
    assert agreement == 0.5


def test_single_logit_outputs_compare_by_sign() -> None:
    _, agreement = compare_outputs([{"z": np.array([1.0, -1.0])}], [{"z": np.array([0.5, 0.2])}])
    assert agreement == 0.5


def test_gate_fails_on_a_drop_above_the_threshold_and_reports_it() -> None:
    comparison = Comparison({"macc": 0.90}, {"macc": 0.85}, {})
    verdict = gate(comparison, "macc", 0.01)
    assert not verdict.passed
    assert verdict.drop == pytest.approx(0.05)
    assert gate(comparison, "macc", 0.06).passed


def test_a_gate_metric_the_evaluator_never_reports_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'macc' is not among"):
        gate(Comparison({"agreement": 1.0}, {"agreement": 1.0}, {}), "macc", 0.01)


def _manifest() -> Manifest:
    return Manifest(
        model="m",
        version=2,
        source_version=1,
        source_sha256="a" * 64,
        artifact_sha256="b" * 64,
        target="cpu",
        precision="int8",
        quantization=QuantizationInfo(mode="static", per_channel=True),
        offline_optimization="extended",
        session_config={},
        accuracy=AccuracyInfo(
            "e", "macc", 0.01, {"macc": 0.9}, {"macc": 0.9}, 0.0, {"y": 0.1}, "passed", "cpu"
        ),
        performance=PerformanceInfo(measured=False, reason="no GPU"),
        tools={"onnxruntime": "1"},
        created_at="2026-01-01T00:00:00+00:00",
        published=False,
    )


def test_manifest_round_trips_through_json(tmp_path: Path) -> None:
    write_manifest(tmp_path, _manifest())
    assert read_manifest(tmp_path) == _manifest()


def test_a_corrupt_manifest_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"model": 3}')
    with pytest.raises(ModelConfigError, match="not a valid compile manifest"):
        read_manifest(tmp_path)


def test_heads_are_the_layers_that_compute_the_outputs(tmp_path: Path) -> None:
    from fleetinfer.compile.passes import head_nodes

    repo = tiny_conv_repository(tmp_path / "models")
    assert head_nodes(repo / "tinyconv" / "1" / "model.onnx") == ("head",)
