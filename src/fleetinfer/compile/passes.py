"""The artifact transformations: offline graph optimization, INT8 quantization, FP16 conversion.

Each pass reads one ONNX file and writes another; `fleetinfer.compile.compiler` chains them.
INT8 static quantization follows ONNX Runtime's recipe: `quant_pre_process` (symbolic shape
inference and basic optimization), then `quantize_static` in QDQ format with per-channel weights,
calibrated on representative inputs with MinMax, Entropy or Percentile ranges. Dynamic quantization
(weights only, activations quantized at run time) suits MatMul-heavy models and needs no calibration.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetinfer.compile.calibration import CalibrationReader, Tensors
from fleetinfer.compile.measure import open_session
from fleetinfer.compile.targets import Target, int8_reduce_range
from fleetinfer.errors import MissingExtraError, UnsupportedBuildError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANTIZATION_MODES = ("static", "dynamic")
_HEAD_PASSTHROUGH = {
    "Reshape",
    "Squeeze",
    "Flatten",
    "Unsqueeze",
    "Identity",
    "Transpose",
    "Gather",
    "Slice",
    "Split",
}


@dataclass(frozen=True, slots=True)
class QuantizationOptions:
    """How INT8 is built. `exclude_heads` keeps the layers that produce the outputs in float."""

    mode: str = "static"
    calibration_method: str = "minmax"
    per_channel: bool = True
    exclude_nodes: tuple[str, ...] = ()
    exclude_heads: bool = False

    def __post_init__(self) -> None:
        if self.mode not in QUANTIZATION_MODES:
            raise UnsupportedBuildError(
                f"quantization mode must be one of {QUANTIZATION_MODES}, got {self.mode!r}"
            )
        if self.calibration_method not in CALIBRATION_METHODS:
            raise UnsupportedBuildError(
                f"calibration method must be one of {CALIBRATION_METHODS}, got {self.calibration_method!r}"
            )


@dataclass(frozen=True, slots=True)
class Int8Scheme:
    """What `quantize_static` / `quantize_dynamic` was called with (recorded in the manifest)."""

    reduce_range: bool
    activation_type: str
    weight_type: str
    excluded_nodes: tuple[str, ...]


def _onnx() -> Any:
    try:
        import onnx
    except ModuleNotFoundError as exc:
        raise MissingExtraError("onnx", "compile", "fleetinfer compile") from exc
    return onnx


def optimize_graph(source: Path, destination: Path, *, level: str) -> None:
    """Save the graph ONNX Runtime builds at `level` (CPU provider); `disable` copies the file."""
    if level == "disable":
        shutil.copyfile(source, destination)
        return
    open_session(source, optimization_level=level, optimized_model_path=destination)


def head_nodes(model_path: Path) -> tuple[str, ...]:
    """Names of the nodes that compute the graph outputs: the last compute node of each output,
    walking back over reshapes."""
    graph = _onnx().load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    heads: list[str] = []
    for output in graph.output:
        node = producer.get(output.name)
        while node is not None and node.op_type in _HEAD_PASSTHROUGH and node.input:
            node = producer.get(node.input[0])
        if node is not None and node.name and node.name not in heads:
            heads.append(node.name)
    return tuple(heads)


def _quantization() -> Any:
    from onnxruntime import quantization

    return quantization


def preprocess(source: Path, destination: Path) -> None:
    """ONNX Runtime's quantization pre-processing (shape inference + basic optimization)."""
    q = _quantization()
    q.shape_inference.quant_pre_process(str(source), str(destination), skip_symbolic_shape=False)


def int8_scheme(target: Target, options: QuantizationOptions, model_path: Path) -> Int8Scheme:
    excluded = options.exclude_nodes + (head_nodes(model_path) if options.exclude_heads else ())
    symmetric = target.name in ("tensorrt", "cuda")  # TensorRT takes symmetric s8 activations
    return Int8Scheme(
        reduce_range=int8_reduce_range(target),
        activation_type="QInt8" if symmetric else "QUInt8",
        weight_type="QInt8",
        excluded_nodes=tuple(dict.fromkeys(excluded)),
    )


def quantize_int8(
    source: Path,
    destination: Path,
    *,
    scheme: Int8Scheme,
    options: QuantizationOptions,
    calibration: Sequence[Tensors],
) -> None:
    """Static QDQ (calibrated) or dynamic INT8 quantization of an already pre-processed model."""
    q = _quantization()
    common: dict[str, Any] = {
        "per_channel": options.per_channel,
        "reduce_range": scheme.reduce_range,
        "weight_type": getattr(q.QuantType, scheme.weight_type),
        "nodes_to_exclude": list(scheme.excluded_nodes),
    }
    if options.mode == "dynamic":
        q.quantize_dynamic(str(source), str(destination), **common)
        return
    methods = {
        "minmax": q.CalibrationMethod.MinMax,
        "entropy": q.CalibrationMethod.Entropy,
        "percentile": q.CalibrationMethod.Percentile,
    }
    symmetric = scheme.activation_type == "QInt8"
    q.quantize_static(
        str(source),
        str(destination),
        CalibrationReader(calibration),
        quant_format=q.QuantFormat.QDQ,
        activation_type=getattr(q.QuantType, scheme.activation_type),
        calibrate_method=methods[options.calibration_method],
        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
        **common,
    )


def convert_fp16(source: Path, destination: Path) -> None:
    """Float tensors to float16, inputs and outputs kept float32 (casts at the edges)."""
    onnx = _onnx()
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    onnx.save(converted, str(destination))
