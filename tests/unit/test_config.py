"""fleetinfer.toml, FLEETINFER_* and flags: one validated configuration, secrets kept out of it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fleetinfer.config import (
    SETTING_NAMES,
    NodeSettings,
    env_name,
    load_config_file,
    load_settings,
    mask_url,
    node_config,
    with_password,
)
from fleetinfer.errors import ConfigError


def write(folder: Path, text: str, name: str = "fleetinfer.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_file_then_environment_then_flags_each_override_the_one_before(tmp_path: Path) -> None:
    write(tmp_path, '[node]\ntarget = "jobs:app"\nworkers = 2\ngrace_s = 5.0\nverbose = true\n')
    env = {"FLEETINFER_WORKERS": "3", "FLEETINFER_GRACE_S": "7.5", "FLEETINFER_PRELOAD": "false"}
    settings = load_settings(cwd=tmp_path, environ=env, overrides={"workers": 4, "grace_s": None})
    assert (settings.target, settings.workers, settings.grace_s) == ("jobs:app", 4, 7.5)
    assert (settings.verbose, settings.preload) == (True, False)
    assert load_settings(cwd=tmp_path, environ={}).workers == 2


def test_no_file_gives_the_embedded_defaults(tmp_path: Path) -> None:
    settings = load_settings(cwd=tmp_path, environ={})
    assert settings == NodeSettings()
    assert settings.queue == "sqlite:///.fleetinfer/queue.db"


def test_every_error_is_reported_at_once_with_its_key_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[node]\nworkrs = 3\nclient = "gpu"\ngrace_s = -1\n[nodes]\n',
        name="bad.toml",
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={"FLEETINFER_METRICS_PORT": "http"}, overrides={"workers": 0})
    message = str(caught.value)
    assert message.startswith("invalid configuration (6 errors): ")
    assert "node.workrs: unknown key, not a node setting: did you mean 'workers'?" in message
    assert "nodes: unknown key, not a table: did you mean 'node'?" in message
    assert "node.client: expected one of inprocess, shared, triton (got 'gpu')" in message
    assert "node.grace_s: Expected float >= 0.0 (got -1)" in message
    assert "FLEETINFER_METRICS_PORT: Expected int, got str (got 'http')" in message
    assert "--workers: Expected int >= 1 (got 0)" in message
    assert "\n" not in message


def test_a_config_file_given_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"configuration file '.*nope.toml' does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_a_file_that_is_not_toml_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(write(tmp_path, "[node\n"), environ={})


def test_the_deploy_table_is_left_for_deploy_render(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nworkers = 2\n[deploy]\nimage = "x"\n[deploy.kubernetes]\n')
    assert load_settings(path, environ={}).workers == 2
    whole = load_config_file(path)
    assert (whole.node.workers, whole.deploy) == (2, {"image": "x", "kubernetes": {}})


def test_a_password_file_is_merged_into_the_url_in_memory_only(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("p@ss/word\n")
    text = (
        '[node]\ntarget = "jobs:app"\n'
        'results = "postgresql://fleet@db.internal:5432/results"\n'
        f'results_password_file = "{tmp_path / "pw"}"\n'
        'queue = "redis://cache:6379/0?queue=q"\nqueue_password_env = "QUEUE_PW"\n'
    )
    os.environ["QUEUE_PW"] = "from-env"
    try:
        settings = load_settings(write(tmp_path, text), environ={})
        config = node_config(settings)
    finally:
        del os.environ["QUEUE_PW"]
    assert config.results_url == "postgresql://fleet:p%40ss%2Fword@db.internal:5432/results"
    assert config.queue_url == "redis://:from-env@cache:6379/0?queue=q"
    assert settings.results == "postgresql://fleet@db.internal:5432/results"  # unchanged


def test_an_unreadable_secret_file_is_one_clear_error(tmp_path: Path) -> None:
    text = '[node]\ntarget = "jobs:app"\nresults = "postgresql://u@h/db"\n'
    text += f'results_password_file = "{tmp_path / "missing"}"\n'
    settings = load_settings(write(tmp_path, text), environ={})
    with pytest.raises(ConfigError, match=r"results_password_file .* cannot be read"):
        node_config(settings)


def test_a_password_variable_that_is_not_set_is_an_error() -> None:
    settings = NodeSettings(target="a:b", queue_password_env="FLEETINFER_TEST_NOT_SET_PW")
    with pytest.raises(ConfigError, match=r"names \$FLEETINFER_TEST_NOT_SET_PW, which is not set"):
        node_config(settings)


def test_a_secret_from_both_a_file_and_a_variable_is_ambiguous(tmp_path: Path) -> None:
    text = '[node]\nqueue_password_file = "f"\nqueue_password_env = "E"\n'
    with pytest.raises(ConfigError, match="give one of the two"):
        load_settings(write(tmp_path, text), environ={})


def test_masking_hides_only_the_password() -> None:
    assert mask_url("postgresql://fleet:pw@db:5432/r?x=1") == "postgresql://fleet:***@db:5432/r?x=1"
    assert mask_url("redis://:pw@cache:6379/0") == "redis://:***@cache:6379/0"
    assert mask_url("sqlite:///.fleetinfer/q.db") == "sqlite:///.fleetinfer/q.db"
    assert with_password("redis://cache:6379/0", "x") == "redis://:x@cache:6379/0"
    with pytest.raises(ConfigError, match="names no host"):
        with_password("sqlite:///q.db", "x")


def test_no_target_anywhere_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no task target"):
        node_config(NodeSettings())


def test_every_setting_has_its_environment_variable_and_a_documented_key() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for key in SETTING_NAMES:
        assert f"`{key}`" in page, key
        assert f"`{env_name(key)}`" in page, key


def test_config_show_masks_secrets_and_prints_json(tmp_path: Path) -> None:
    write(tmp_path, '[node]\nresults = "postgresql://fleet:hunter2@db/r"\nworkers = 3\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETINFER_")}
    command = [sys.executable, "-m", "fleetinfer", "config", "show"]
    shown = subprocess.run(
        [*command, "--json"], cwd=tmp_path, capture_output=True, text=True, env=env, check=True
    )
    node = json.loads(shown.stdout)["node"]
    assert (node["results"], node["workers"]) == ("postgresql://fleet:***@db/r", 3)
    text = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert "hunter2" not in text.stdout + shown.stdout
    assert 'results = "postgresql://fleet:***@db/r"' in text.stdout


def test_the_documented_example_is_a_valid_configuration(tmp_path: Path) -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    [example] = re.findall(r"```toml\n(.*?)```", page, flags=re.DOTALL)
    settings = load_settings(write(tmp_path, example), environ={})
    assert (settings.client, settings.metrics_host, settings.log_format) == (
        "shared",
        "0.0.0.0",
        "json",
    )


def test_the_server_layout_a_bench_measured_reaches_the_node_config(tmp_path: Path) -> None:
    path = tmp_path / "fleetinfer.toml"
    path.write_text('[node]\ntarget = "a:b"\nserver_instances = 2\n')
    settings = load_settings(path, environ={"FLEETINFER_SERVER_THREADS": "1"}, overrides={})
    config = node_config(settings)
    assert (config.server_instance_count, config.server_intra_op_threads) == (2, 1)
    with pytest.raises(ConfigError, match="FLEETINFER_SERVER_INSTANCES: Expected int >= 1"):
        load_settings(path, environ={"FLEETINFER_SERVER_INSTANCES": "0"}, overrides={})
