"""`fleetinfer model init`: a repository entry written from an ONNX graph loads and serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fleetinfer.client import ModelClient
from fleetinfer.errors import InputError
from fleetinfer.server.model_init import default_name, init_model
from fleetinfer.server.repository import ModelRepository
from tests.helpers.tiny_models import affine_model


def fixed_batch_model(path: Path) -> Path:
    """An int64 identity and a cast with a fixed leading dimension and a dynamic second one."""
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["ids"], ["same"]),
            helper.make_node("Cast", ["ids"], ["f"], to=1),
        ],
        "fixed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "n"])],
        [
            helper.make_tensor_value_info("same", TensorProto.INT64, [1, "n"]),
            helper.make_tensor_value_info("f", TensorProto.FLOAT, [1, "n"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_graph_with_a_dynamic_batch_axis_becomes_a_batched_entry_that_serves(
    tmp_path: Path,
) -> None:
    source = affine_model(tmp_path / "export" / "affine.onnx", features=4)
    done = init_model(source, tmp_path / "models", max_batch_size=16)
    assert (done.name, done.max_batch_size) == ("affine", 16)
    text = done.config_path.read_text()
    assert 'name = "x"\ndtype = "float32"\nshape = [-1, 4]' in text
    assert "sha256 = " in text
    assert done.model_path == tmp_path / "models" / "affine" / "1" / "model.onnx"
    config = ModelRepository(tmp_path / "models").config("affine")
    assert [(s.name, s.dtype, s.shape) for s in config.outputs] == [("y", "float32", (-1, 4))]
    client = ModelClient.from_mode("inprocess", repository=tmp_path / "models")
    try:
        got = client.model("affine").infer({"x": np.ones((3, 4), np.float32)})
    finally:
        client.close()
    np.testing.assert_allclose(got["y"], np.full((3, 4), 3.0, np.float32))


def test_a_fixed_leading_dimension_gives_max_batch_size_1_and_other_dynamic_axes_minus_1(
    tmp_path: Path,
) -> None:
    source = fixed_batch_model(tmp_path / "model.onnx")
    done = init_model(source, tmp_path / "repo", name="fixed")
    assert done.max_batch_size == 1
    assert [(t.name, t.dtype, t.shape) for t in done.outputs] == [
        ("same", "int64", (1, -1)),
        ("f", "float32", (1, -1)),
    ]
    ModelRepository(tmp_path / "repo").config("fixed")


def test_the_default_name_is_the_stem_or_for_model_onnx_the_folder() -> None:
    assert default_name(Path("/x/resnet50.onnx")) == "resnet50"
    assert default_name(Path("/models/cdnet/model.onnx")) == "cdnet"


def test_an_existing_entry_is_kept_unless_force(tmp_path: Path) -> None:
    source = affine_model(tmp_path / "affine.onnx")
    first = init_model(source, tmp_path / "repo")
    with pytest.raises(InputError, match="exists already: give --force"):
        init_model(source, tmp_path / "repo")
    assert init_model(source, tmp_path / "repo", force=True).config_path == first.config_path
    second = init_model(source, tmp_path / "repo", version=2, force=True)
    assert second.model_path.parent.name == "2"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.onnx", "no such file"),
        (
            lambda d: (d / "notes.onnx", (d / "notes.onnx").write_text("hello"))[0],
            "is not an ONNX model",
        ),
    ],
)
def test_a_missing_or_non_onnx_file_is_an_input_error(
    tmp_path: Path, make: object, message: str
) -> None:
    source = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(InputError, match=message):
        init_model(source, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_an_unwritable_repository_or_a_bad_name_is_an_input_error(tmp_path: Path) -> None:
    source = affine_model(tmp_path / "affine.onnx")
    with pytest.raises(InputError, match="give --repo a folder you can write"):
        init_model(source, Path("/proc/no-repo"))
    with pytest.raises(InputError, match="cannot name a repository folder"):
        init_model(source, tmp_path / "repo", name="../escape")
