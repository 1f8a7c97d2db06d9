"""A model repository entry from an ONNX graph: what `fleetinfer model init` writes.

    init_model(Path("resnet.onnx"), Path("models"))
    # models/resnet/config.toml  (inputs, outputs, dtypes, shapes, max_batch_size, sha256)
    # models/resnet/1/model.onnx (a copy of the file)

The graph is read through ONNX Runtime's session metadata, so no `onnx` package is needed.
A dimension without a fixed size (a symbolic name or none) becomes -1. When every input and
output has such a leading dimension, the model takes batches and `max_batch_size` is written;
otherwise the model runs one request at a time (`max_batch_size = 1`).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetinfer.errors import InputError
from fleetinfer.server.repository import CONFIG_FILE, MODEL_FILE, file_sha256, parse_config

DEFAULT_MAX_BATCH_SIZE = 64
ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True, slots=True)
class GraphTensor:
    """One input or output as the repository names it: dtype name and shape (-1 = dynamic)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class InitResult:
    """What `init_model` wrote."""

    name: str
    config_path: Path
    model_path: Path
    max_batch_size: int
    inputs: tuple[GraphTensor, ...]
    outputs: tuple[GraphTensor, ...]


def init_model(
    onnx_path: Path,
    repo: Path,
    *,
    name: str | None = None,
    version: int = 1,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    force: bool = False,
) -> InitResult:
    """Write `repo/NAME/config.toml` and `repo/NAME/VERSION/model.onnx` from `onnx_path`."""
    name = check_model_name(name if name is not None else default_name(onnx_path))
    _check_numbers(version, max_batch_size)
    inputs, outputs = read_graph(onnx_path)
    batch = max_batch_size if _batchable(inputs + outputs) else 1
    folder = repo / name
    config_path, model_path = folder / CONFIG_FILE, folder / str(version) / MODEL_FILE
    _refuse_overwrite(config_path, model_path, force=force)
    sha256 = {version: file_sha256(onnx_path)}  # the copy's too: recorded, checked at load
    _write(onnx_path, model_path, config_path, _config_text(name, batch, inputs, outputs, sha256))
    parse_config(config_path, expected_name=name)  # what we wrote must read back
    return InitResult(name, config_path, model_path, batch, inputs, outputs)


def default_name(onnx_path: Path) -> str:
    """The file's stem; for a file called `model.onnx`, its folder's name."""
    stem = onnx_path.stem
    if stem == "model" and onnx_path.resolve().parent.name:
        return onnx_path.resolve().parent.name
    return stem


def check_model_name(name: str) -> str:
    """A model name is a folder name: letters, digits, `_ . -`, not starting with a dot."""
    if not _MODEL_NAME.fullmatch(name):
        raise InputError(
            f"model name {name!r} cannot name a repository folder: use 1 to 128 letters, digits, "
            "'_', '.' or '-', not starting with '.' (give one with --name)"
        )
    return name


def _check_numbers(version: int, max_batch_size: int) -> None:
    if version < 1:
        raise InputError(f"--version must be an integer >= 1, got {version}")
    if max_batch_size < 1:
        raise InputError(f"--max-batch-size must be an integer >= 1, got {max_batch_size}")


def read_graph(onnx_path: Path) -> tuple[tuple[GraphTensor, ...], tuple[GraphTensor, ...]]:
    """Inputs and outputs of an ONNX file, from an ONNX Runtime session's metadata."""
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path}: no such file: give the path of an .onnx model file")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types, not exported
        first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise InputError(
            f"{onnx_path} is not an ONNX model ONNX Runtime can load ({first_line}): give an "
            ".onnx file exported by your framework (torch.onnx.export, tf2onnx, ...)"
        ) from exc
    inputs = tuple(_tensor(onnx_path, arg) for arg in session.get_inputs())
    outputs = tuple(_tensor(onnx_path, arg) for arg in session.get_outputs())
    return inputs, outputs


def _tensor(onnx_path: Path, arg: Any) -> GraphTensor:
    dtype = ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise InputError(
            f"{onnx_path}: tensor {arg.name!r} has type {arg.type}, which the model server does "
            f"not serve: supported are {', '.join(sorted(ORT_DTYPES.values()))}"
        )
    shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in (arg.shape or []))
    if not shape:
        raise InputError(
            f"{onnx_path}: tensor {arg.name!r} is a scalar (no dimensions); the repository "
            "needs tensors of at least one dimension"
        )
    return GraphTensor(arg.name, dtype, shape)


def _batchable(tensors: tuple[GraphTensor, ...]) -> bool:
    return all(t.shape[0] == -1 for t in tensors)


def _refuse_overwrite(config_path: Path, model_path: Path, *, force: bool) -> None:
    existing = [p for p in (config_path, model_path) if p.exists()]
    if existing and not force:
        raise InputError(
            f"{existing[0]} exists already: give --force to overwrite it, or another --name "
            "or --version"
        )


def _write(onnx_path: Path, model_path: Path, config_path: Path, text: str) -> None:
    try:
        model_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_path, model_path)
        config_path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(
            f"cannot write the model repository entry at {config_path.parent} ({exc.strerror}): "
            "give --repo a folder you can write"
        ) from exc


def _config_text(
    name: str,
    max_batch_size: int,
    inputs: tuple[GraphTensor, ...],
    outputs: tuple[GraphTensor, ...],
    sha256: dict[int, str],
) -> str:
    lines = [
        "# written by `fleetinfer model init` from the ONNX graph; see docs/model-repository.md",
        f"name = {json.dumps(name)}",
        f"max_batch_size = {max_batch_size}",
    ]
    for key, tensors in (("inputs", inputs), ("outputs", outputs)):
        for tensor in tensors:
            lines += ["", f"[[{key}]]", f"name = {json.dumps(tensor.name)}"]
            lines += [f'dtype = "{tensor.dtype}"', f"shape = {list(tensor.shape)}"]
    for version, digest in sha256.items():
        lines += ["", f"[versions.{version}]", f'sha256 = "{digest}"']
    return "\n".join(lines) + "\n"
