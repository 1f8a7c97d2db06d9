"""The tests' moto server, with moto's SQS clock made cheap: `python -m tests.helpers.moto_server
-H 127.0.0.1 -p PORT` takes moto.server's arguments.

moto's SQS reads the clock through `unix_time()`, which builds two datetimes per call, and it
reads it for every message in the queue on every request (each send recomputes the queue's
attributes; each receive filters visible, undelayed messages). With 3,000 messages queued one
request costs about a second of the server's CPU on this machine, so a 3,000-task drill through
SQS would take an hour. The replacement returns the same number (seconds since the epoch, for
moto's naive UTC datetimes) from `time.time()` when no datetime is given. The queue's three scans
(visible and undelayed, not visible, delayed) read the clock once per scan rather than once or
twice per message, with moto's own comparisons (visible: now > visible_at; delayed: now <
delayed_until). Nothing else changes.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from moto.core import utils as moto_utils
from moto.server import main
from moto.sqs import models as sqs_models

_EPOCH = datetime.datetime(1970, 1, 1)


def unix_time(dt: datetime.datetime | None = None) -> float:
    """moto's `unix_time`: seconds since the epoch of a naive UTC datetime, or of now."""
    if dt is None:
        return time.time()
    return (dt - _EPOCH).total_seconds()


def unix_time_millis(dt: datetime.datetime | None = None) -> float:
    return unix_time(dt) * 1000.0


def _messages(queue: Any) -> list[Any]:
    now = unix_time_millis()
    return [m for m in queue._messages if now > m.visible_at and not now < m.delayed_until]


def _not_visible(queue: Any) -> int:
    now = unix_time_millis()
    return sum(1 for m in queue._messages if not now > m.visible_at)


def _delayed(queue: Any) -> int:
    now = unix_time_millis()
    return sum(1 for m in queue._messages if now < m.delayed_until)


for module in (moto_utils, sqs_models):
    module.unix_time = unix_time  # type: ignore[attr-defined]
    module.unix_time_millis = unix_time_millis  # type: ignore[attr-defined]
sqs_models.Queue.messages = property(_messages)  # type: ignore[method-assign,assignment]
sqs_models.Queue.approximate_number_of_messages_not_visible = property(_not_visible)  # type: ignore[method-assign,assignment]
sqs_models.Queue.approximate_number_of_messages_delayed = property(_delayed)  # type: ignore[method-assign,assignment]

if __name__ == "__main__":
    main()
