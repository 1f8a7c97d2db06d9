"""`compile_model` on a tiny conv model: versions, manifests, the accuracy gate, publishing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from fleetinfer.compile.accuracy import InputsEvaluator
from fleetinfer.compile.calibration import ArraySource, ZeroSource
from fleetinfer.compile.compiler import BenchSettings, CompileRequest, compile_model
from fleetinfer.compile.passes import QuantizationOptions
from fleetinfer.compile.targets import ARM_BF16_FASTMATH
from fleetinfer.errors import AccuracyGateError, CalibrationError
from fleetinfer.server.repository import ModelRepository, file_sha256, verify_artifact
from tests.helpers.tiny_conv import tiny_conv_eval_inputs, tiny_conv_inputs, tiny_conv_repository

QUICK = BenchSettings(rounds=1, duration_s=0.05)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tiny_conv_repository(tmp_path / "models")


@pytest.fixture
def evaluator(repo: Path) -> InputsEvaluator:
    inputs = tiny_conv_eval_inputs(repo / "tinyconv" / "1" / "model.onnx", 48)
    return InputsEvaluator(inputs, description="48 clear tiny-conv inputs")


def _request(repo: Path, **kwargs: object) -> CompileRequest:
    return CompileRequest(repository=repo, model="tinyconv", bench=QUICK, **kwargs)  # type: ignore[arg-type]


def test_fp32_compile_writes_the_next_version_with_its_hash_recorded(repo: Path) -> None:
    result = compile_model(_request(repo, measure=False))
    repository = ModelRepository(repo)
    config = repository.config("tinyconv")
    assert result.version == 2
    assert config.sha256[2] == file_sha256(result.folder / "model.onnx")
    assert result.manifest.source_sha256 == config.sha256[1]
    assert json.loads((result.folder / "manifest.json").read_text())["precision"] == "fp32"
    verify_artifact(repository.resolve("tinyconv", 1))


def test_an_unpublished_version_does_not_change_what_is_served(repo: Path) -> None:
    compile_model(_request(repo, measure=False))
    assert ModelRepository(repo).versions("tinyconv") == [1]


def test_a_published_version_is_served_under_the_latest_policy(
    repo: Path, evaluator: InputsEvaluator
) -> None:
    result = compile_model(_request(repo, measure=False, publish=True), evaluator=evaluator)
    assert result.published
    assert ModelRepository(repo).resolve("tinyconv").version == result.version


def test_int8_with_representative_calibration_passes_the_gate_and_records_it(
    repo: Path, evaluator: InputsEvaluator
) -> None:
    calibration = ArraySource(tiny_conv_inputs(32))
    result = compile_model(
        _request(repo, precision="int8", publish=True), calibration=calibration, evaluator=evaluator
    )
    manifest = result.manifest
    assert manifest.accuracy.gate == "passed", manifest.accuracy
    assert manifest.quantization.mode == "static"
    assert manifest.quantization.per_channel
    assert manifest.quantization.calibration_batches == 32
    assert len(manifest.quantization.calibration_sha256) == 64
    assert manifest.accuracy.max_abs_diff["logits"] > 0  # it really is a different model
    assert manifest.performance.measured
    assert manifest.performance.speedup > 0
    ops = {n.op_type for n in onnx.load(str(result.folder / "model.onnx")).graph.node}
    assert ops & {"QuantizeLinear", "QLinearConv", "DequantizeLinear"}, ops


def test_all_zero_calibration_is_refused_by_the_gate_with_the_drop(
    repo: Path, evaluator: InputsEvaluator
) -> None:
    config = ModelRepository(repo).config("tinyconv")
    with pytest.raises(AccuracyGateError, match=r"agreement fell from 1\.0000") as caught:
        compile_model(
            _request(repo, precision="int8", publish=True, measure=False),
            calibration=ZeroSource(config),
            evaluator=evaluator,
        )
    assert caught.value.drop > 0.01
    assert ModelRepository(repo).versions("tinyconv") == [1]  # on disk, not served
    assert (repo / "tinyconv" / "2" / "manifest.json").is_file()


def test_force_publishes_despite_a_failed_gate_and_says_so(
    repo: Path, evaluator: InputsEvaluator
) -> None:
    config = ModelRepository(repo).config("tinyconv")
    result = compile_model(
        _request(repo, precision="int8", publish=True, force=True, measure=False),
        calibration=ZeroSource(config),
        evaluator=evaluator,
    )
    assert result.published
    assert result.manifest.accuracy.gate == "forced"


def test_static_int8_without_calibration_says_what_to_pass(repo: Path) -> None:
    with pytest.raises(CalibrationError, match="--calibration"):
        compile_model(_request(repo, precision="int8"))


def test_dynamic_int8_needs_no_calibration(repo: Path) -> None:
    result = compile_model(
        _request(
            repo, precision="int8", measure=False, quantization=QuantizationOptions(mode="dynamic")
        )
    )
    assert result.manifest.quantization.mode == "dynamic"
    assert result.manifest.quantization.calibration_sha256 == ""


def test_fp16_for_cuda_keeps_float32_io_and_says_the_speed_is_unmeasured(repo: Path) -> None:
    result = compile_model(_request(repo, target="cuda", precision="fp16"))
    graph = onnx.load(str(result.folder / "model.onnx")).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    assert not result.manifest.performance.measured
    assert "CUDAExecutionProvider" in result.manifest.performance.reason
    assert "CPUExecutionProvider" in result.manifest.accuracy.evaluated_on


def test_bf16_for_arm_records_the_fast_math_session_entry(repo: Path) -> None:
    result = compile_model(_request(repo, target="cpu-arm64", precision="bf16"))
    assert result.manifest.session_config == {ARM_BF16_FASTMATH: "1"}


def test_compiling_a_compiled_version_starts_from_its_fp32_source(
    repo: Path, evaluator: InputsEvaluator
) -> None:
    compile_model(_request(repo, measure=False, publish=True), evaluator=evaluator)
    again = compile_model(_request(repo, measure=False))
    assert again.manifest.source_version == 1


def test_inputs_of_the_compiled_model_match_the_source_interface(repo: Path) -> None:
    result = compile_model(
        _request(repo, measure=False, precision="int8"),
        calibration=ArraySource(tiny_conv_inputs(8)),
    )
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(result.folder / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    out = session.run(None, {"x": np.zeros((3, 3, 16, 16), np.float32)})[0]
    assert out.shape == (3, 4)
    assert out.dtype == np.float32
