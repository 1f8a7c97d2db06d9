"""Redis Streams broker: `redis://host:port/db?queue=name` (or `rediss://` for TLS).

One stream per queue read through one consumer group (XADD / XREADGROUP / XACK). Visibility is
a sorted set of lease deadlines (entry id -> deadline, server time): an expired lease is
reclaimed with XCLAIM by the next receive, which increments the PEL delivery counter, so the
receive count is the PEL's. This is XAUTOCLAIM's min-idle rule with a per-message deadline, so
`receive(visibility_timeout_s=...)` and `extend_visibility` work per message. Released messages
wait in a second sorted set, delayed sends in a third (promoted into the stream atomically by
the receive script). Dead letters go to a dead-letter stream. Every multi-step change is one Lua
script (package data in `redis_scripts/`), so it is atomic; a receive of many messages is one
round trip, `send_batch` is one pipeline, `ack_batch` one script call.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlunsplit

from fleetinfer.errors import (
    BrokerUnavailableError,
    ConfigError,
    InputError,
    MissingExtraError,
)
from fleetinfer.queue.base import (
    DEFAULT_MAX_RECEIVES,
    DEFAULT_VISIBILITY_TIMEOUT_S,
    Broker,
    DeadLetter,
    Message,
    QueueStats,
    check_body_size,
    check_dedup_ids,
    check_delay,
    check_receive_args,
    long_poll,
    raise_if_stale,
)
from fleetinfer.queue.url import BrokerUrl, check_settings

if TYPE_CHECKING:
    import redis as redis_lib
    from redis.commands.core import Script

GROUP = "fleetinfer"
_SCRIPTS = ("receive", "settle", "send_delayed", "send_dedup", "redrive", "stats")
STATS_SCAN_ENTRIES = 1000  # stream entries `stats` looks through for the oldest visible one


def _import_redis() -> Any:
    try:
        import redis
    except ImportError as exc:
        raise MissingExtraError("redis", "redis", "the Redis broker") from exc
    return redis


def _script_text(name: str) -> str:
    return resources.files(__package__).joinpath(f"redis_scripts/{name}.lua").read_text("utf-8")


@contextmanager
def _translate_redis_errors(url: str) -> Iterator[None]:
    redis = _import_redis()
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerUnavailableError(
            f"Redis broker {url!r} cannot be reached: {exc}; check the server is up and the "
            "URL, then retry"
        ) from exc
    except redis.RedisError as exc:
        raise BrokerUnavailableError(f"Redis broker {url!r} failed: {exc}") from exc


def _split_receipt(receipt: str) -> tuple[str, str]:
    entry_id, sep, token = receipt.partition("/")
    if not sep or "-" not in entry_id or not token:
        raise InputError(
            f"{receipt!r} is not a receipt of the Redis broker: expected '<entry-id>/<token>' "
            "as returned in Message.receipt"
        )
    return entry_id, token


def _age_s(sent_at: float | None) -> float | None:
    """Seconds since `sent_at`; None when the scan found no visible entry (more than
    STATS_SCAN_ENTRIES leased ones ahead of it)."""
    return None if sent_at is None else max(0.0, time.time() - sent_at)


def _fields(flat: Sequence[bytes]) -> dict[str, str]:
    """An entry's fields as text; bytes that are not UTF-8 stay as surrogates, so that a
    hostile entry still comes back as a message, which the worker refuses and dead-letters."""
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _seconds(text: str | None) -> float:
    try:
        return float(text or 0.0)
    except ValueError:
        return 0.0


class RedisBroker(Broker):
    """One queue as a Redis stream with a consumer group, plus its dead-letter stream."""

    def __init__(
        self,
        client: redis_lib.Redis,
        *,
        queue: str = "default",
        visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
        max_receives: int = DEFAULT_MAX_RECEIVES,
        url: str = "redis://",
    ) -> None:
        check_settings(url, visibility_timeout_s, max_receives)
        if not queue:
            raise ConfigError(f"Redis broker {url!r}: the queue name must not be empty")
        self.url = url
        self.queue = queue
        self.visibility_timeout_s = visibility_timeout_s
        self.max_receives = max_receives
        self._client = client
        self._consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        prefix = f"fleetinfer:{{{queue}}}"
        self._stream, self._dead = f"{prefix}:stream", f"{prefix}:dead"
        self._inflight, self._retry = f"{prefix}:inflight", f"{prefix}:retry"
        self._delayed, self._delayed_bodies = f"{prefix}:delayed", f"{prefix}:delayed_bodies"
        self._receipts = f"{prefix}:receipts"
        self._dedup = f"{prefix}:dedup"  # dedup id -> message id, while that message is live
        self._scripts: dict[str, Script] = {
            name: client.register_script(_script_text(name)) for name in _SCRIPTS
        }
        self._ensure_group()

    @classmethod
    def from_url(
        cls, url: str, *, visibility_timeout_s: float | None = None, max_receives: int | None = None
    ) -> RedisBroker:
        """Open `redis://host:port/db?queue=name&visibility_timeout_s=30&max_receives=5`."""
        parsed = BrokerUrl.parse(
            url,
            accepted_keys=("queue",),
            visibility_timeout_s=visibility_timeout_s,
            max_receives=max_receives,
        )
        parts = parsed.parts
        server_url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        redis = _import_redis()
        try:
            client = redis.Redis.from_url(server_url, socket_connect_timeout=10.0)
        except ValueError as exc:
            raise ConfigError(
                f"Redis URL {url!r} is malformed ({exc}): expected redis://host:port/db?queue=name"
            ) from exc
        return cls(
            client,
            queue=parsed.options.get("queue", "default"),
            visibility_timeout_s=parsed.visibility_timeout_s,
            max_receives=parsed.max_receives,
            url=url,
        )

    def _ensure_group(self) -> None:
        redis = _import_redis()
        with _translate_redis_errors(self.url):
            try:
                self._client.xgroup_create(self._stream, GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # -- send --------------------------------------------------------------------------------

    def send_raw_batch(
        self,
        bodies: Sequence[str],
        *,
        delay_s: float = 0.0,
        dedup_ids: Sequence[str] | None = None,
    ) -> list[str]:
        check_delay(delay_s)
        check_dedup_ids(bodies, dedup_ids)
        for body in bodies:
            check_body_size(body)
        ids = [uuid.uuid4().hex for _ in bodies]
        sent_at = repr(time.time())
        with _translate_redis_errors(self.url):
            if dedup_ids is not None:
                return self._send_dedup(ids, bodies, dedup_ids, sent_at, delay_s)
            if delay_s > 0:
                args: list[str] = [str(round(delay_s * 1000))]
                for message_id, body in zip(ids, bodies, strict=True):
                    args += [message_id, f"{sent_at}\n{body}"]
                self._scripts["send_delayed"](keys=[self._delayed, self._delayed_bodies], args=args)
                return ids
            pipe = self._client.pipeline(transaction=False)
            for message_id, body in zip(ids, bodies, strict=True):
                pipe.xadd(self._stream, {"id": message_id, "body": body, "sent_at": sent_at})
            pipe.execute()
        return ids

    def _send_dedup(
        self,
        ids: list[str],
        bodies: Sequence[str],
        dedup_ids: Sequence[str],
        sent_at: str,
        delay_s: float,
    ) -> list[str]:
        """One script call: each body is queued unless its dedup id is held by a live message."""
        args: list[str] = [str(round(delay_s * 1000)), sent_at]
        for message_id, body, dedup_id in zip(ids, bodies, dedup_ids, strict=True):
            args += [message_id, dedup_id, body]
        keys = [self._stream, self._delayed, self._delayed_bodies, self._dedup]
        queued = self._scripts["send_dedup"](keys=keys, args=args)
        return [item.decode() for item in queued]

    # -- receive -----------------------------------------------------------------------------

    def receive(
        self,
        *,
        max_messages: int = 1,
        wait_s: float = 0.0,
        visibility_timeout_s: float | None = None,
    ) -> list[Message]:
        check_receive_args(max_messages, wait_s, visibility_timeout_s)
        timeout_s = visibility_timeout_s or self.visibility_timeout_s
        return long_poll(lambda: self._receive_once(max_messages, timeout_s), wait_s)

    def _receive_once(self, max_messages: int, timeout_s: float) -> list[Message]:
        keys = [
            self._stream,
            self._inflight,
            self._retry,
            self._delayed,
            self._delayed_bodies,
            self._dead,
            self._receipts,
            self._dedup,
        ]
        args: list[str | int] = [GROUP, self._consumer, max_messages]
        args += [round(timeout_s * 1000), self.max_receives]
        args += [secrets.token_hex(8) for _ in range(max_messages)]
        try:
            with _translate_redis_errors(self.url):
                rows = self._scripts["receive"](keys=keys, args=args)
        except BrokerUnavailableError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._ensure_group()  # the stream was deleted (purge elsewhere): start afresh
            return []
        return [self._message(row) for row in rows]

    @staticmethod
    def _message(row: list[Any]) -> Message:
        entry_id, flat, receive_count, token = row
        fields = _fields(flat)  # written by anyone with access to Redis: missing fields too
        return Message(
            id=fields.get("id", entry_id.decode()),
            body=fields.get("body", ""),
            receipt=f"{entry_id.decode()}/{token.decode()}",
            receive_count=int(receive_count),
            sent_at=_seconds(fields.get("sent_at")),
        )

    # -- settle ------------------------------------------------------------------------------

    def _settle(self, op: str, receipts: Sequence[str], arg: str = "") -> None:
        args: list[str] = [op, GROUP, arg]
        for receipt in receipts:
            args.extend(_split_receipt(receipt))
        keys = [self._stream, self._inflight, self._retry, self._dead, self._receipts, self._dedup]
        with _translate_redis_errors(self.url):
            stale_positions = self._scripts["settle"](keys=keys, args=args)
        raise_if_stale([receipts[int(p) - 1] for p in stale_positions])

    def ack(self, receipt: str) -> None:
        self._settle("ack", [receipt])

    def ack_batch(self, receipts: Sequence[str]) -> None:
        """Ack many receipts in one script call; stale ones raise together after the rest."""
        if receipts:
            self._settle("ack", receipts)

    def release(self, receipt: str, *, delay_s: float = 0.0) -> None:
        check_delay(delay_s)
        self._settle("release", [receipt], str(round(delay_s * 1000)))

    def extend_visibility(self, receipt: str, timeout_s: float) -> None:
        check_receive_args(1, 0.0, timeout_s)
        self._settle("extend", [receipt], str(round(timeout_s * 1000)))

    def dead_letter(self, receipt: str, reason: str) -> None:
        self._settle("dead", [receipt], reason)

    # -- dead letters, stats -----------------------------------------------------------------

    def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        with _translate_redis_errors(self.url):
            entries: list[tuple[bytes, dict[bytes, bytes]]] = self._client.xrange(  # type: ignore[assignment]
                self._dead, count=limit
            )
        letters = []
        for _entry_id, raw in entries:
            f = {_text(k): v.decode("utf-8", "replace") for k, v in raw.items()}
            letters.append(
                DeadLetter(
                    id=f.get("id", ""),
                    body=f.get("body", ""),
                    reason=f.get("reason", ""),
                    receive_count=int(_seconds(f.get("receive_count"))),
                    dead_at=_seconds(f.get("dead_at")),
                )
            )
        return letters

    def redrive(self, *, limit: int | None = None) -> int:
        count = 2**31 - 1 if limit is None else limit
        with _translate_redis_errors(self.url):
            moved = self._scripts["redrive"](
                keys=[self._stream, self._dead, self._dedup], args=[count]
            )
        return int(moved)

    def stats(self) -> QueueStats:
        keys = [self._stream, self._inflight, self._retry, self._delayed, self._dead]
        keys.append(self._delayed_bodies)
        with _translate_redis_errors(self.url):
            visible, in_flight, delayed, dead, oldest = self._scripts["stats"](
                keys=keys, args=[STATS_SCAN_ENTRIES]
            )
        oldest_sent_at = float(oldest) if oldest else None
        return QueueStats(
            visible=int(visible),
            in_flight=int(in_flight),
            delayed=int(delayed),
            dead=int(dead),
            oldest_visible_age_s=_age_s(oldest_sent_at) if int(visible) else 0.0,
        )

    def purge(self) -> None:
        keys = [self._stream, self._dead, self._inflight, self._retry]
        keys += [self._delayed, self._delayed_bodies, self._receipts, self._dedup]
        with _translate_redis_errors(self.url):
            self._client.delete(*keys)
        self._ensure_group()

    def close(self) -> None:
        self._client.close()
