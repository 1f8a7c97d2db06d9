"""One contract for registry storage, over a folder and an S3 prefix (moto server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from fleetinfer.errors import ConfigError, RegistryUnavailableError
from fleetinfer.registry.store import RegistryStore, open_store


@pytest.fixture(params=["file", "s3"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, unique_name: str
) -> Iterator[RegistryStore]:
    if request.param == "file":
        yield open_store(f"file://{tmp_path}")
        return
    endpoint: str = request.getfixturevalue("moto_endpoint")
    bucket = unique_name.lower().replace("_", "-")[:60]
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    yield open_store(f"s3://{bucket}/fleet/registry?endpoint_url={endpoint}")


def test_a_missing_key_reads_as_none(store: RegistryStore) -> None:
    assert store.get("models/cdnet/config.toml") is None


def test_a_put_key_reads_back_the_same_bytes(store: RegistryStore) -> None:
    store.put("models/cdnet/1/cpu/model.onnx", b"\x00\x01onnx")
    assert store.get("models/cdnet/1/cpu/model.onnx") == b"\x00\x01onnx"


def test_put_if_absent_writes_once_and_keeps_the_first_value(store: RegistryStore) -> None:
    assert store.put("models/m/1/cpu/build.json", b"first", if_absent=True)
    assert not store.put("models/m/1/cpu/build.json", b"second", if_absent=True)
    assert store.get("models/m/1/cpu/build.json") == b"first"


def test_list_returns_the_keys_under_a_prefix_sorted(store: RegistryStore) -> None:
    for key in ("nodes/b.json", "nodes/a.json", "desired/cdnet.json"):
        store.put(key, b"{}")
    assert store.list("nodes") == ["nodes/a.json", "nodes/b.json"]
    assert store.list("rollouts") == []


def test_a_deleted_key_is_gone(store: RegistryStore) -> None:
    store.put("nodes/a.json", b"{}")
    store.delete("nodes/a.json")
    assert store.get("nodes/a.json") is None


def test_a_key_that_climbs_out_is_refused(store: RegistryStore) -> None:
    with pytest.raises(ConfigError, match="plain names"):
        store.get("models/../../etc/passwd")


def test_an_s3_registry_that_cannot_be_reached_is_transient() -> None:
    store = open_store("s3://bucket/prefix?endpoint_url=http://127.0.0.1:9")
    with pytest.raises(RegistryUnavailableError, match="cannot be reached"):
        store.get("desired/cdnet.json")


def test_a_file_registry_whose_folder_is_gone_is_transient(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'gone'}")
    with pytest.raises(RegistryUnavailableError, match="missing"):
        store.list("desired")


def test_an_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="s3://bucket/prefix"):
        open_store("ftp://host/registry")
