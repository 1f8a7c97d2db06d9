from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetinfer.client import ModelClient
from fleetinfer.errors import (
    ConfigError,
    IntegrityError,
    InvalidInputError,
    ModelConfigError,
    UnknownModelError,
)
from fleetinfer.server.repository import ModelRepository, parse_config
from tests.helpers.tiny_models import affine_model, affine_repository, write_config


def test_config_is_parsed_with_defaults(tmp_path: Path) -> None:
    config = parse_config(write_config(tmp_path / "m", "m"))
    assert config.name == "m"
    assert config.inputs[0].shape == (-1, 4)
    assert config.runtime.execution_providers == ("CPUExecutionProvider",)
    assert config.version_policy.policy == "latest"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ('[runtime]\ngraph_optimization_level = "max"', "runtime.graph_optimization_level"),
        ("[runtime]\nintra_op_threads = -2", "runtime.intra_op_threads"),
        ('[version_policy]\npolicy = "specific"', "version_policy.versions"),
        ("[versions.one]\nsha256 = 'x'", "versions.one"),
    ],
)
def test_an_inconsistent_config_names_the_file_and_the_field(
    tmp_path: Path, extra: str, field: str
) -> None:
    path = write_config(tmp_path / "m", "m", extra=extra)
    with pytest.raises(ModelConfigError, match=field) as info:
        parse_config(path)
    assert str(path) in str(info.value)


def test_a_missing_required_field_is_named(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        'name = "m"\nmax_batch_size = 4\n[[outputs]]\nname="y"\ndtype="float32"\nshape=[-1]\n'
    )
    with pytest.raises(ModelConfigError, match="missing required field `inputs`"):
        parse_config(path)


def test_a_config_whose_name_differs_from_its_folder_is_refused(tmp_path: Path) -> None:
    write_config(tmp_path / "folder", "other")
    with pytest.raises(ModelConfigError, match="folder name 'folder'"):
        ModelRepository(tmp_path).config("folder")


def test_the_latest_version_is_served_by_default(tmp_path: Path) -> None:
    repo = ModelRepository(affine_repository(tmp_path, versions={1: 2.0, 3: 5.0}))
    assert repo.versions("affine") == [3]
    assert repo.resolve("affine").version == 3
    with pytest.raises(UnknownModelError, match="no served version 1"):
        repo.resolve("affine", 1)


def test_unknown_model_lists_what_exists(tmp_path: Path) -> None:
    repo = ModelRepository(affine_repository(tmp_path))
    with pytest.raises(UnknownModelError, match=r"available: \['affine'\]"):
        repo.config("nope")


def test_inprocess_client_runs_the_model(tmp_path: Path) -> None:
    client = ModelClient.from_mode("inprocess", repository=affine_repository(tmp_path))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = client.model("affine").infer({"x": x})
    np.testing.assert_array_equal(out["y"], x * 2 + 1)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"z": np.zeros((1, 4), np.float32)}, "takes inputs"),
        ({"x": np.zeros((1, 4), np.float64)}, "must be float32, got float64"),
        ({"x": np.zeros((1, 5), np.float32)}, r"must have shape \[-1, 4\]"),
        ({"x": np.zeros((9, 4), np.float32)}, "above max_batch_size 8"),
        ({"x": [[1.0, 2.0, 3.0, 4.0]]}, "must be a numpy array"),
    ],
)
def test_a_bad_request_gets_a_typed_error(
    tmp_path: Path, inputs: dict[str, object], message: str
) -> None:
    handle = ModelClient.from_mode("inprocess", repository=affine_repository(tmp_path)).model(
        "affine"
    )
    with pytest.raises(InvalidInputError, match=message):
        handle.infer(inputs)


def test_a_tampered_artifact_is_refused(tmp_path: Path) -> None:
    root = affine_repository(tmp_path)
    affine_model(root / "affine" / "1" / "model.onnx", scale=3.0)  # rewritten after publishing
    handle = ModelClient.from_mode("inprocess", repository=root).model("affine")
    with pytest.raises(IntegrityError, match="sha256"):
        handle.infer({"x": np.zeros((1, 4), np.float32)})


def test_an_unknown_client_mode_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model client mode"):
        ModelClient.from_mode("psychic", repository=tmp_path)


def test_a_compiled_versions_session_config_is_applied_when_it_loads(tmp_path: Path) -> None:
    """`fleetinfer compile` records ONNX Runtime session entries (ARM BF16 fast math, …) in the
    version's manifest.json; the session is opened with them, in process and in the server."""
    import json

    from fleetinfer.server.session import OrtModel

    root = affine_repository(tmp_path / "repo")
    version = ModelRepository(root).resolve("affine", None)
    entry = "session.intra_op.allow_spinning"
    (version.path.parent / "manifest.json").write_text(json.dumps({"session_config": {entry: "0"}}))
    model = OrtModel(version)
    assert model.session_config == {entry: "0"}
    assert model.session.get_session_options().get_session_config_entry(entry) == "0"
    (version.path.parent / "manifest.json").write_text('{"session_config": {"k": 1}}')
    with pytest.raises(ModelConfigError, match=r"manifest.json: field 'session_config'"):
        OrtModel(version)
