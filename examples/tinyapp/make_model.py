"""Regenerate examples/tinyapp/models/tiny (needs `onnx`: pip install 'fleetinfer[compile]').

    python examples/tinyapp/make_model.py

A two-layer MLP, 64 → 256 → 8 features, fixed seed: the same bytes every time, so the sha256 in
config.toml stays valid.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FOLDER = Path(__file__).resolve().parent / "models" / "tiny"
FEATURES, HIDDEN, OUTPUTS = 64, 256, 8

CONFIG = """name = "tiny"
max_batch_size = 64

[[inputs]]
name = "x"
dtype = "float32"
shape = [-1, {features}]

[[outputs]]
name = "score"
dtype = "float32"
shape = [-1, {outputs}]

[runtime]
intra_op_threads = 1

[versions.1]
sha256 = "{sha256}"
"""


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(20261123)
    weights = {
        "w1": rng.standard_normal((FEATURES, HIDDEN)).astype(np.float32) / 8,
        "b1": np.zeros(HIDDEN, dtype=np.float32),
        "w2": rng.standard_normal((HIDDEN, OUTPUTS)).astype(np.float32) / 16,
    }
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Add", ["h", "b1"], ["hb"]),
            helper.make_node("Relu", ["hb"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["score"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", OUTPUTS])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def main() -> None:
    path = FOLDER / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build(), str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    text = CONFIG.format(features=FEATURES, outputs=OUTPUTS, sha256=digest)
    (FOLDER / "config.toml").write_text(text, encoding="utf-8")
    print(f"{path} sha256 {digest}")


if __name__ == "__main__":
    main()
