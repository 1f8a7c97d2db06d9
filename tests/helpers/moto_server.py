"""The tests' moto server, with moto's SQS clock made cheap: `python -m tests.helpers.moto_server
-H 127.0.0.1 -p PORT` takes moto.server's arguments.

moto's SQS reads the clock through `unix_time()`, which builds two datetimes per call, and it
reads it for every message in the queue on every request (each send recomputes the queue's
attributes; each receive filters visible, undelayed messages). With 3,000 messages queued one
request costs about a second of the server's CPU on this machine, so a 3,000-task drill through
SQS would take an hour. The replacement returns the same number (seconds since the epoch, for
moto's naive UTC datetimes) from `time.time()` when no datetime is given; nothing else changes.
"""

from __future__ import annotations

import datetime
import sys
import time

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


for module in (moto_utils, sqs_models):
    module.unix_time = unix_time  # type: ignore[attr-defined]
    module.unix_time_millis = unix_time_millis  # type: ignore[attr-defined]

if __name__ == "__main__":
    sys.exit(main())
