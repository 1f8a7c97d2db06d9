"""Capability classes: one queue per set of task requirements, next to the base queue.

A task that requires capabilities (`{"arch": "arm64"}`) is sent to the queue of its class, whose
name derives deterministically from the sorted requirements:

    class_name({"arch": "arm64", "cpu.avx512_vnni": "true"}) == "cap-arch-arm64-cpu_avx512_vnni-true"

    sqlite:///tasks.db?queue=jobs     → sqlite:///tasks.db?queue=jobs.cap-arch-arm64
    redis://host:6379/0?queue=jobs    → redis://host:6379/0?queue=jobs.cap-arch-arm64
    sqs://jobs?region=...             → sqs://jobs-cap-arch-arm64?region=...   (SQS names allow no '.')

Which classes exist is recorded where the base queue lives, because no backend can list "the
queues of this queue": SQLite keeps a `capability_classes` table in the same file, Redis a set
`fleetinfer:{<queue>}:classes`, and SQS needs no record (ListQueues with the prefix
`<queue>-cap-`). Sending to a class records it; a node lists the classes each few seconds and
consumes those its attributes satisfy.

Each node also marks, at every such listing, the classes it consumes as seen now (SQLite column
`consumed_at`, Redis hash `fleetinfer:{<queue>}:classes_consumed_at`, SQS tag
`fleetinfer-consumed-at` on the class queue). `fleetinfer status` shows each class's depth and
flags the classes no node has consumed for `UNSERVED_AFTER_S`: tasks no running node satisfies.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fleetinfer.errors import ConfigError, InputError
from fleetinfer.node.attributes import check_requirements
from fleetinfer.queue.base import Broker

CLASS_PREFIX = "cap-"
UNSERVED_AFTER_S = 30.0
_SQS_TAG = "fleetinfer-consumed-at"
_SQS_MAX_NAME = 80 - len("-dlq")


def class_name(requires: Mapping[str, str]) -> str:
    """`cap-<key>-<value>-...` over the sorted, checked requirements ('.' in keys becomes '_')."""
    checked = check_requirements(requires)
    if not checked:
        raise InputError("a capability class needs at least one requirement")
    parts = [f"{key.replace('.', '_', 1)}-{checked[key]}" for key in sorted(checked)]
    return CLASS_PREFIX + "-".join(parts)


def class_requirements(name: str) -> dict[str, str]:
    """The requirements a class name stands for (the inverse of `class_name`)."""
    if not name.startswith(CLASS_PREFIX):
        raise InputError(f"{name!r} is not a capability class: it must start with {CLASS_PREFIX!r}")
    tokens = name[len(CLASS_PREFIX) :].split("-")
    if len(tokens) % 2:
        raise InputError(f"capability class {name!r} is malformed: expected cap-KEY-VALUE-...")
    requires = {}
    for key, value in zip(tokens[::2], tokens[1::2], strict=True):
        for prefix in ("cpu_", "label_"):
            if key.startswith(prefix):
                key = prefix[:-1] + "." + key[len(prefix) :]
        requires[key] = value
    return check_requirements(requires, what=f"capability class {name!r}")


def base_queue(url: str) -> str:
    """The queue name a broker URL names (the default is `default`, as the backends')."""
    parts = urlsplit(url)
    if parts.scheme == "sqs":
        return parts.netloc + parts.path.rstrip("/")
    return dict(parse_qsl(parts.query)).get("queue", "default")


def class_queue_url(url: str, name: str) -> str:
    """The URL of class `name` of the queue `url` names (the same backend and options)."""
    parts = urlsplit(url)
    queue = base_queue(url)
    if parts.scheme == "sqs":
        full = f"{queue}-{name}"
        if len(full) > _SQS_MAX_NAME:
            raise InputError(
                f"SQS queue name {full!r} for this capability class is longer than "
                f"{_SQS_MAX_NAME} characters: use a shorter base queue name or fewer requirements"
            )
        return urlunsplit((parts.scheme, full, "", parts.query, parts.fragment))
    options = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "queue"]
    query = urlencode([("queue", f"{queue}.{name}"), *options])
    return url.partition("?")[0] + "?" + query  # keeps sqlite:/// as written


def record_class(broker: Broker, name: str) -> None:
    """Note in the base queue's backend that class `name` exists (SQS: its queue is the note)."""
    kind = type(broker).__name__
    if kind == "SqliteBroker":
        with _SqliteClasses(broker) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO capability_classes (queue, class) VALUES (?, ?)",
                (_queue_of(broker), name),
            )
    elif kind == "RedisBroker":
        _client(broker).sadd(_redis_key(broker), name)


def list_classes(broker: Broker) -> list[str]:
    """The classes recorded for the base queue of `broker`, sorted."""
    kind = type(broker).__name__
    if kind == "SqliteBroker":
        with _SqliteClasses(broker) as conn:
            rows = conn.execute(
                "SELECT class FROM capability_classes WHERE queue = ?", (_queue_of(broker),)
            ).fetchall()
        return sorted(str(r[0]) for r in rows)
    if kind == "RedisBroker":
        members = _client(broker).smembers(_redis_key(broker))
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
    if kind == "SqsBroker":
        return _sqs_classes(broker)
    return []


def mark_consumed(broker: Broker, names: list[str]) -> None:
    """Note that a running node consumes the classes `names` of `broker`'s queue, now."""
    now, kind = time.time(), type(broker).__name__
    if not names:
        return
    if kind == "SqliteBroker":
        with _SqliteClasses(broker) as conn:
            conn.executemany(
                "UPDATE capability_classes SET consumed_at = ? WHERE queue = ? AND class = ?",
                [(now, _queue_of(broker), n) for n in names],
            )
    elif kind == "RedisBroker":
        _client(broker).hset(_redis_key(broker) + "_consumed_at", mapping=dict.fromkeys(names, now))
    elif kind == "SqsBroker":
        for name in names:
            _client(broker).tag_queue(QueueUrl=_sqs_url(broker, name), Tags={_SQS_TAG: str(now)})


def consumed_at(broker: Broker, names: list[str]) -> dict[str, float | None]:
    """When a node last consumed each class (seconds since the epoch; None: never)."""
    kind = type(broker).__name__
    seen: dict[str, float | None] = dict.fromkeys(names)
    if kind == "SqliteBroker":
        with _SqliteClasses(broker) as conn:
            rows = conn.execute(
                "SELECT class, consumed_at FROM capability_classes WHERE queue = ?",
                (_queue_of(broker),),
            ).fetchall()
        seen.update({str(c): at for c, at in rows if c in seen})
    elif kind == "RedisBroker":
        raw = _client(broker).hgetall(_redis_key(broker) + "_consumed_at")
        seen.update({k.decode(): float(v) for k, v in raw.items() if k.decode() in seen})
    elif kind == "SqsBroker":
        for name in names:
            tags = _client(broker).list_queue_tags(QueueUrl=_sqs_url(broker, name))
            value = tags.get("Tags", {}).get(_SQS_TAG)
            seen[name] = None if value is None else float(value)
    return seen


def _sqs_url(broker: Broker, name: str) -> str:
    url = _client(broker).get_queue_url(QueueName=f"{_queue_of(broker)}-{name}")["QueueUrl"]
    return str(url)


def _sqs_classes(broker: Broker) -> list[str]:
    prefix = f"{_queue_of(broker)}-{CLASS_PREFIX}"
    pages = _client(broker).get_paginator("list_queues").paginate(QueueNamePrefix=prefix)
    names = {u.rsplit("/", 1)[-1] for page in pages for u in page.get("QueueUrls", [])}
    cut = len(_queue_of(broker)) + 1
    return sorted(n[cut:] for n in names if not n.endswith("-dlq"))


def _queue_of(broker: Broker) -> str:
    queue = getattr(broker, "queue", None)
    if not isinstance(queue, str):
        raise ConfigError(f"broker {broker.url!r} names no queue")
    return queue


def _client(broker: Broker) -> Any:
    return broker._client  # type: ignore[attr-defined]  # the backend's own client


def _redis_key(broker: Broker) -> str:
    return f"fleetinfer:{{{_queue_of(broker)}}}:classes"


class _SqliteClasses:
    """A short connection to the SQLite broker's file, with the classes table in place."""

    def __init__(self, broker: Broker) -> None:
        self._path = broker.path  # type: ignore[attr-defined]

    def __enter__(self) -> sqlite3.Connection:
        self._conn = sqlite3.connect(self._path, timeout=30.0, isolation_level=None)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS capability_classes "
            "(queue TEXT NOT NULL, class TEXT NOT NULL, consumed_at REAL, "
            "PRIMARY KEY (queue, class))"
        )
        return self._conn

    def __exit__(self, *exc: object) -> None:
        self._conn.close()


def open_class_broker(broker: Broker, requires: Mapping[str, str]) -> Broker:
    """The queue of the class of `requires` next to `broker`'s queue, recorded as existing."""
    from fleetinfer.queue import open_broker

    name = class_name(requires)
    class_broker = open_broker(
        class_queue_url(broker.url, name),
        visibility_timeout_s=broker.visibility_timeout_s,
        max_receives=broker.max_receives,
    )
    record_class(broker, name)
    return class_broker
