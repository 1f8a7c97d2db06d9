"""Tiny ONNX models built with onnx.helper, and model repositories around them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def affine_model(path: Path, *, features: int = 4, scale: float = 2.0, bias: float = 1.0) -> Path:
    """y = x * scale + bias, input `x` float32 [-1, features], output `y` of the same shape."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", features])],
        initializer=[
            numpy_helper.from_array(np.array([scale], dtype=np.float32), "s"),
            numpy_helper.from_array(np.array([bias], dtype=np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_config(
    folder: Path, name: str, *, features: int = 4, max_batch_size: int = 8, extra: str = ""
) -> Path:
    text = f"""
name = "{name}"
max_batch_size = {max_batch_size}
[[inputs]]
name = "x"
dtype = "float32"
shape = [-1, {features}]
[[outputs]]
name = "y"
dtype = "float32"
shape = [-1, {features}]
{extra}
"""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(text)
    return folder / "config.toml"


def affine_repository(
    root: Path, *, name: str = "affine", versions: dict[int, float] | None = None
) -> Path:
    """A repository with one affine model; `versions` maps version -> scale."""
    versions = versions or {1: 2.0}
    hashes = []
    for version, scale in versions.items():
        path = affine_model(root / name / str(version) / "model.onnx", scale=scale)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        hashes.append(f'[versions.{version}]\nsha256 = "{digest}"')
    write_config(root / name, name, extra="\n".join(hashes))
    return root


def identity_model(path: Path, *, features: int) -> Path:
    """y = x, input `x` float32 [-1, features]: what the transport alone costs."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", features])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def identity_repository(
    root: Path, *, features: int = 512 * 1024, name: str = "identity", max_batch_size: int = 8
) -> Path:
    """A repository with one identity model; the default input is 2 MiB of float32 per sample."""
    identity_model(root / name / "1" / "model.onnx", features=features)
    write_config(root / name, name, features=features, max_batch_size=max_batch_size)
    return root


def fragile_repository(root: Path, *, name: str = "fragile") -> Path:
    """y = x + c with c of shape [1, 4], configured as [-1, -1]: any width but 4 (or 1) passes
    validation and then fails inside ONNX Runtime (an execution failure)."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "fragile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(np.ones((1, 4), dtype=np.float32), "c")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = root / name / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    text = (root / name / "config.toml").parent
    text.mkdir(parents=True, exist_ok=True)
    (text / "config.toml").write_text(
        f'name = "{name}"\nmax_batch_size = 8\n'
        '[[inputs]]\nname = "x"\ndtype = "float32"\nshape = [-1, -1]\n'
        '[[outputs]]\nname = "y"\ndtype = "float32"\nshape = [-1, -1]\n'
    )
    return root


def cdnet_repository(root: Path) -> Path:
    """The shipped CDNet repository when it exists, else an untrained CDNet of the same
    architecture exported the same way (same graph, same cost; weights do not matter for
    transport exactness or speed). Needs torch (the `train` extra) only for the stand-in."""
    from roadchange.pipeline import shipped_model_repository

    shipped = shipped_model_repository()
    if (shipped / "cdnet" / "config.toml").is_file():
        return shipped
    from roadchange.model import N_CHANGE_TYPES, build_model, export_onnx, variant_config

    config = variant_config("cdnet")
    export_onnx(build_model(config, seed=0), root / "cdnet" / "1" / "model.onnx")
    px, channels = config.input_px, config.in_channels
    (root / "cdnet" / "config.toml").write_text(
        'name = "cdnet"\nmax_batch_size = 64\n'
        f'[[inputs]]\nname = "raster"\ndtype = "float32"\nshape = [-1, {channels}, {px}, {px}]\n'
        '[[outputs]]\nname = "changed_logit"\ndtype = "float32"\nshape = [-1]\n'
        '[[outputs]]\nname = "remap_logit"\ndtype = "float32"\nshape = [-1]\n'
        '[[outputs]]\nname = "type_logits"\ndtype = "float32"\n'
        f"shape = [-1, {N_CHANGE_TYPES}]\n"
    )
    return root
