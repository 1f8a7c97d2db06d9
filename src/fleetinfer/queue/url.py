"""Broker URLs: the scheme picks the backend, the query string carries options.

Every backend accepts `visibility_timeout_s` and `max_receives` in the query string; explicit
arguments to `open_broker` win over the URL. Each backend names the other keys it accepts, and
an unknown key is a `ConfigError` rather than a silently ignored typo.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qs, urlsplit

from fleetinfer.errors import ConfigError
from fleetinfer.queue.base import DEFAULT_MAX_RECEIVES, DEFAULT_VISIBILITY_TIMEOUT_S

COMMON_KEYS = ("visibility_timeout_s", "max_receives")


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """A parsed broker URL: its parts, its query options, and the common queue settings."""

    url: str
    parts: SplitResult
    options: dict[str, str]
    visibility_timeout_s: float
    max_receives: int

    @classmethod
    def parse(
        cls,
        url: str,
        *,
        accepted_keys: Iterable[str],
        visibility_timeout_s: float | None = None,
        max_receives: int | None = None,
    ) -> BrokerUrl:
        """Split `url`, check its query keys, resolve the common settings (arguments win)."""
        parts = urlsplit(url)
        options = parse_query(url, parts.query, (*COMMON_KEYS, *accepted_keys))
        vis = visibility_timeout_s
        if vis is None:
            vis = _float_option(url, options, "visibility_timeout_s", DEFAULT_VISIBILITY_TIMEOUT_S)
        receives = max_receives
        if receives is None:
            receives = _int_option(url, options, "max_receives", DEFAULT_MAX_RECEIVES)
        check_settings(url, vis, receives)
        return cls(url, parts, options, vis, receives)


def parse_query(url: str, query: str, accepted: Iterable[str]) -> dict[str, str]:
    """The query string as a dict; unknown or repeated keys raise `ConfigError`."""
    allowed = tuple(accepted)
    try:
        raw = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r} has a malformed query string: {exc}") from exc
    options: dict[str, str] = {}
    for key, values in raw.items():
        if key not in allowed:
            raise ConfigError(
                f"broker URL {url!r} has an unknown option {key!r}: accepted options are "
                f"{', '.join(allowed)}"
            )
        if len(values) != 1:
            raise ConfigError(f"broker URL {url!r} repeats the option {key!r}: give it once")
        options[key] = values[0]
    return options


def check_settings(url: str, visibility_timeout_s: float, max_receives: int) -> None:
    """Visibility timeout must be positive and finite, max_receives at least 1."""
    if not 0.0 < visibility_timeout_s < float("inf"):
        raise ConfigError(
            f"broker {url!r}: visibility_timeout_s must be a positive number of seconds, "
            f"got {visibility_timeout_s!r}"
        )
    if isinstance(max_receives, bool) or not isinstance(max_receives, int) or max_receives < 1:
        raise ConfigError(
            f"broker {url!r}: max_receives must be an integer >= 1, got {max_receives!r}"
        )


def _float_option(url: str, options: dict[str, str], key: str, default: float) -> float:
    if key not in options:
        return default
    try:
        return float(options[key])
    except ValueError as exc:
        raise ConfigError(
            f"broker URL {url!r}: {key} must be a number of seconds, got {options[key]!r}"
        ) from exc


def _int_option(url: str, options: dict[str, str], key: str, default: int) -> int:
    if key not in options:
        return default
    try:
        return int(options[key])
    except ValueError as exc:
        raise ConfigError(
            f"broker URL {url!r}: {key} must be an integer, got {options[key]!r}"
        ) from exc
