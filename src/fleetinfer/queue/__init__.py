"""Queues with SQS semantics: `open_broker(url)` picks the backend from the URL's scheme.

    sqlite:///tasks.db?queue=name              embedded default, one file, many processes
    redis://127.0.0.1:6379/0?queue=name        Redis Streams with a consumer group
    sqs://queue-name?region=us-east-1          Amazon SQS (endpoint_url=... for moto/localstack)

Every URL also accepts `visibility_timeout_s` and `max_receives`; explicit arguments win.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from fleetinfer.errors import ConfigError
from fleetinfer.queue.base import (
    DEFAULT_MAX_RECEIVES,
    DEFAULT_VISIBILITY_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    Broker,
    DeadLetter,
    Message,
    QueueStats,
)

__all__ = [
    "DEFAULT_MAX_RECEIVES",
    "DEFAULT_VISIBILITY_TIMEOUT_S",
    "MAX_MESSAGE_BYTES",
    "Broker",
    "DeadLetter",
    "Message",
    "QueueStats",
    "open_broker",
]

_Opener = Callable[[str, float | None, int | None], Broker]


def _open_sqlite(url: str, visibility_timeout_s: float | None, max_receives: int | None) -> Broker:
    from fleetinfer.queue.backends.sqlite import SqliteBroker

    return SqliteBroker.from_url(
        url, visibility_timeout_s=visibility_timeout_s, max_receives=max_receives
    )


def _open_redis(url: str, visibility_timeout_s: float | None, max_receives: int | None) -> Broker:
    from fleetinfer.queue.backends.redis import RedisBroker

    return RedisBroker.from_url(
        url, visibility_timeout_s=visibility_timeout_s, max_receives=max_receives
    )


def _open_sqs(url: str, visibility_timeout_s: float | None, max_receives: int | None) -> Broker:
    from fleetinfer.queue.backends.sqs import SqsBroker

    return SqsBroker.from_url(
        url, visibility_timeout_s=visibility_timeout_s, max_receives=max_receives
    )


_OPENERS: dict[str, _Opener] = {
    "sqlite": _open_sqlite,
    "redis": _open_redis,
    "rediss": _open_redis,
    "sqs": _open_sqs,
}


def open_broker(
    url: str, *, visibility_timeout_s: float | None = None, max_receives: int | None = None
) -> Broker:
    """Open the queue named by `url`; a bad scheme or option raises `ConfigError`."""
    scheme = urlsplit(url).scheme if isinstance(url, str) else ""
    opener = _OPENERS.get(scheme)
    if opener is None:
        raise ConfigError(
            f"broker URL {url!r} has an unknown scheme {scheme!r}: accepted schemes are "
            f"{', '.join(s + '://' for s in _OPENERS)} (for example sqlite:///tasks.db)"
        )
    return opener(url, visibility_timeout_s, max_receives)
