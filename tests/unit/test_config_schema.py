"""One schema for `config.toml` and `manifest.json`: strict about unknown keys, every mistake
reported at once with its key path, values that would break every request refused at load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetinfer.errors import IntegrityError, ModelConfigError
from fleetinfer.server.repository import ModelRepository, file_sha256, parse_config
from fleetinfer.server.session import OrtModel
from tests.helpers.tiny_models import affine_repository, write_config


@pytest.mark.parametrize(
    ("sizes", "field"),
    [
        ("[0]", "batching.preferred_batch_sizes[0]` must be an integer >= 1, got 0"),
        ('["x"]', "batching.preferred_batch_sizes[0]` must be an integer >= 1, got 'x'"),
        ("[-4]", "batching.preferred_batch_sizes[0]` must be an integer >= 1, got -4"),
        ("[2, 1.5]", "batching.preferred_batch_sizes[1]` must be an integer >= 1, got 1.5"),
        ("[true]", "batching.preferred_batch_sizes[0]` must be an integer >= 1, got True"),
        ("[9]", "batching.preferred_batch_sizes[0]` must be at most max_batch_size 8, got 9"),
        ("4", "batching.preferred_batch_sizes` must be a list, each item an integer >= 1"),
    ],
)
def test_preferred_batch_sizes_that_no_batch_can_have_are_refused_at_load(
    tmp_path: Path, sizes: str, field: str
) -> None:
    path = write_config(
        tmp_path / "m", "m", max_batch_size=8, extra=f"[batching]\npreferred_batch_sizes = {sizes}"
    )
    with pytest.raises(ModelConfigError) as info:
        parse_config(path)
    assert f"{path}: field `{field}" in str(info.value)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (
            "[batching]\nmax_queue_delay = 5",
            "unknown field `batching.max_queue_delay`: did you mean `batching.max_queue_delay_us`?",
        ),
        ("[batchin]\nmax_queue_delay_us = 5", "unknown field `batchin`: did you mean `batching`?"),
        (
            "[runtime]\nintra_op_thread = 2",
            "unknown field `runtime.intra_op_thread`: did you mean `runtime.intra_op_threads`?",
        ),
        ("[instances]\nnumber = 2", "unknown field `instances.number`: valid keys here: ['count']"),
        (
            '[versions.1]\nsha256 = "' + "a" * 64 + '"\nsha265 = "x"',
            "unknown field `versions.1.sha265`: did you mean `versions.1.sha256`?",
        ),
        (
            '[versions."\u00b2"]\nsha256 = "x"',
            "field `versions.\u00b2` must be a [versions.<number>]",
        ),
    ],
)
def test_an_unknown_key_is_named_with_the_closest_valid_one(
    tmp_path: Path, extra: str, says: str
) -> None:
    with pytest.raises(ModelConfigError) as info:
        parse_config(write_config(tmp_path / "m", "m", extra=extra))
    assert says in str(info.value)


def test_a_config_with_several_mistakes_reports_all_of_them_at_once(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        'name = "m"\nmax_batch_size = 0\nmax_batch_sise = 4\n'
        '[[inputs]]\nname = "x"\ndtype = "float"\nshape = [0, 4]\n'
        '[runtime]\ngraph_optimization_level = "max"\n'
        '[version_policy]\npolicy = "specific"\nversions = ["a"]\n'
    )
    with pytest.raises(ModelConfigError) as info:
        parse_config(path)
    message = str(info.value)
    for mistake in [
        "field `max_batch_size` must be an integer >= 1, got 0",
        "unknown field `max_batch_sise`",
        "field `inputs[0].dtype` must be one of",
        "field `inputs[0].shape[0]` must be a positive integer or -1 (dynamic), got 0",
        "field `runtime.graph_optimization_level` must be one of",
        "field `version_policy.versions[0]` must be a version number",
        "missing required field `outputs`",
    ]:
        assert mistake in message
    assert "\n" not in message  # one line, mistakes separated by "; "


def test_the_shipped_configs_pass_the_schema() -> None:
    shipped = Path(__file__).parents[2] / "src" / "roadchange" / "models"
    for config in [
        *shipped.glob("*/config.toml"),
        *Path("examples").glob("*/models/*/config.toml"),
    ]:
        assert parse_config(config).max_batch_size >= 1


def test_a_manifest_that_records_another_artifact_is_refused(tmp_path: Path) -> None:
    root = affine_repository(tmp_path / "repo")
    version = ModelRepository(root).resolve("affine")
    manifest = version.path.parent / "manifest.json"
    manifest.write_text(json.dumps({"artifact_sha256": file_sha256(version.path)}))
    assert OrtModel(version).session_config == {}
    manifest.write_text(json.dumps({"artifact_sha256": "ab" * 32, "session_config": {}}))
    with pytest.raises(IntegrityError, match="records " + "ab" * 32):
        OrtModel(version)


@pytest.mark.parametrize(
    ("manifest", "says"),
    [
        ({"sesion_config": {}}, "unknown field `sesion_config`: did you mean `session_config`?"),
        ({"session_config": {"session.use_env_allocators": "1"}}, "unsupported entry"),
        ({"session_config": {"session.intra_op.allow_spinning": "yes"}}, 'must be "0" or "1"'),
        ({"artifact_sha256": "abc"}, "field 'artifact_sha256' must be a hex sha256"),
        ([1, 2], "must be a JSON object"),
        ("[" * 100_000, "not a valid compile manifest"),
    ],
)
def test_a_manifest_outside_the_schema_is_refused_with_its_key(
    tmp_path: Path, manifest: object, says: str
) -> None:
    root = affine_repository(tmp_path / "repo")
    version = ModelRepository(root).resolve("affine")
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (version.path.parent / "manifest.json").write_text(text)
    with pytest.raises(ModelConfigError, match=r"manifest\.json: ") as info:
        OrtModel(version)
    assert says in str(info.value)
