"""A tiny convolutional classifier in ONNX (built with onnx.helper) and a repository around it.

`x` float32 [-1, 3, 16, 16] -> Conv 3x3 (8) -> Relu -> Conv 3x3 stride 2 (16) -> Relu ->
GlobalAveragePool -> Flatten -> Gemm (4 classes) -> `logits` float32 [-1, 4]. Random but seeded
weights; inputs drawn from `tiny_conv_inputs` give logits whose argmax varies across samples.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CHANNELS, SIZE, CLASSES = 3, 16, 4


def _weights(seed: int) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.standard_normal((8, CHANNELS, 3, 3)) * 0.4).astype(np.float32),
        "b1": (rng.standard_normal(8) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32),
        "b2": (rng.standard_normal(16) * 0.1).astype(np.float32),
        "wf": (rng.standard_normal((CLASSES, 16)) * 1.0).astype(np.float32),
        "bf": np.zeros(CLASSES, dtype=np.float32),
    }


def tiny_conv_model(path: Path, *, seed: int = 0) -> Path:
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", CHANNELS, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[numpy_helper.from_array(v, k) for k, v in _weights(seed).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def tiny_conv_inputs(
    count: int, *, batch: int = 1, seed: int = 1
) -> list[dict[str, np.ndarray[Any, Any]]]:
    """Representative inputs: smooth positive images with per-sample brightness and contrast."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        base = rng.uniform(0.0, 1.0, (batch, CHANNELS, 1, 1))
        noise = rng.standard_normal((batch, CHANNELS, SIZE, SIZE)) * rng.uniform(
            0.2, 1.0, (batch, 1, 1, 1)
        )
        out.append({"x": (base + noise).astype(np.float32)})
    return out


CONFIG = """name = "{name}"
max_batch_size = 16

[[inputs]]
name = "x"
dtype = "float32"
shape = [-1, 3, 16, 16]

[[outputs]]
name = "logits"
dtype = "float32"
shape = [-1, 4]
{extra}
[versions.1]
sha256 = "{digest}"
"""


def tiny_conv_repository(root: Path, *, name: str = "tinyconv", extra: str = "") -> Path:
    """A repository with one tiny conv model, version 1, its sha256 recorded."""
    path = tiny_conv_model(root / name / "1" / "model.onnx")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (root / name / "config.toml").write_text(CONFIG.format(name=name, extra=extra, digest=digest))
    return root


def tiny_conv_eval_inputs(
    model_path: Path, count: int, *, seed: int = 9, min_margin: float = 0.5
) -> list[dict[str, np.ndarray[Any, Any]]]:
    """Evaluation inputs whose FP32 decision is clear: top-2 logit margin >= `min_margin`
    (a representative evaluation set has labels, not coin flips)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    kept: list[dict[str, np.ndarray[Any, Any]]] = []
    for batch in tiny_conv_inputs(count * 4, seed=seed):
        top2 = np.sort(session.run(None, batch)[0][0])[-2:]
        if top2[1] - top2[0] >= min_margin:
            kept.append(batch)
        if len(kept) == count:
            break
    return kept
