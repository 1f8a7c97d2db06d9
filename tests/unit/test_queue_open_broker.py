"""open_broker: URL schemes, query options, explicit arguments, argument checks, missing extras."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fleetinfer.errors import ConfigError, InputError, MissingExtraError
from fleetinfer.queue import DEFAULT_MAX_RECEIVES, DEFAULT_VISIBILITY_TIMEOUT_S, open_broker
from fleetinfer.queue.backends.sqlite import SqliteBroker


def test_unknown_scheme_is_a_config_error_naming_the_url_and_the_accepted_schemes() -> None:
    with pytest.raises(ConfigError, match=r"amqp://h/q.*sqlite://.*redis://.*sqs://"):
        open_broker("amqp://h/q")


def test_unknown_query_option_is_a_config_error_naming_the_accepted_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'visibilty_timeout_s'.*visibility_timeout_s"):
        open_broker(f"sqlite:///{tmp_path}/q.db?visibilty_timeout_s=3")


@pytest.mark.parametrize(
    "query",
    [
        "visibility_timeout_s=soon",
        "visibility_timeout_s=0",
        "visibility_timeout_s=-1",
        "visibility_timeout_s=inf",
        "max_receives=0",
        "max_receives=2.5",
        "queue=a&queue=b",
        "queue=",
    ],
)
def test_bad_option_values_are_config_errors(tmp_path: Path, query: str) -> None:
    with pytest.raises(ConfigError, match="broker"):
        open_broker(f"sqlite:///{tmp_path}/q.db?{query}")


def test_url_options_apply_and_explicit_arguments_win(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/q.db?queue=jobs&visibility_timeout_s=7.5&max_receives=9"
    with open_broker(url) as from_url:
        assert (from_url.visibility_timeout_s, from_url.max_receives) == (7.5, 9)
    with open_broker(url, visibility_timeout_s=2, max_receives=3) as explicit:
        assert (explicit.visibility_timeout_s, explicit.max_receives) == (2, 3)
    with open_broker(f"sqlite:///{tmp_path}/q.db") as defaults:
        assert (defaults.visibility_timeout_s, defaults.max_receives) == (
            DEFAULT_VISIBILITY_TIMEOUT_S,
            DEFAULT_MAX_RECEIVES,
        )
        assert isinstance(defaults, SqliteBroker)
        assert defaults.queue == "default"


def test_explicit_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_receives"):
        open_broker(f"sqlite:///{tmp_path}/q.db", max_receives=0)
    with pytest.raises(ConfigError, match="visibility_timeout_s"):
        open_broker(f"sqlite:///{tmp_path}/q.db", visibility_timeout_s=0)


def test_three_slashes_is_relative_and_four_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with open_broker("sqlite:///.fleetinfer/tasks.db") as relative:
        relative.send("x")
    assert (tmp_path / ".fleetinfer" / "tasks.db").is_file()
    with open_broker(f"sqlite:///{tmp_path}/abs.db") as absolute:
        absolute.send("x")
    assert (tmp_path / "abs.db").is_file()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:"])
def test_sqlite_url_without_a_shareable_file_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="SQLite URL"):
        open_broker(url)


def test_uncreatable_folder_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot create the folder"):
        open_broker(f"sqlite:///{tmp_path}/file/q.db")


def test_out_of_range_arguments_are_input_errors(tmp_path: Path) -> None:
    with open_broker(f"sqlite:///{tmp_path}/q.db") as broker:
        for bad in (
            {"max_messages": 0},
            {"wait_s": -1},
            {"wait_s": 21},
            {"visibility_timeout_s": 0},
        ):
            with pytest.raises(InputError):
                broker.receive(**bad)  # type: ignore[arg-type]
        with pytest.raises(InputError, match="delay_s"):
            broker.send("x", delay_s=-1)
        with pytest.raises(InputError, match="delay_s"):
            broker.send("x", delay_s=901)
        with pytest.raises(InputError, match="receipt"):
            broker.ack("not-a-receipt")
        assert broker.stats().pending == 0


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("redis://127.0.0.1:6379/0", "redis", "redis"),
        ("sqs://q?region=us-east-1", "boto3", "sqs"),
    ],
)
def test_missing_driver_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, url: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError, match=rf"fleetinfer\[{extra}\]"):
        open_broker(url)


def test_the_cli_prints_the_extra_to_install_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from fleetinfer.cli.app import app

    monkeypatch.setitem(sys.modules, "redis", None)
    done = CliRunner().invoke(app, ["status", "--queue", "redis://127.0.0.1:6379/0"])
    assert done.exit_code == 3, done.output
    assert "pip install 'fleetinfer[redis]'" in done.output  # not read as rich markup
