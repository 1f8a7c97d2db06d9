"""The node's logs: text or JSON lines on stderr, one record per settled task, a progress line.

Levels mean what they say:

    debug     preflight details, scrapes that failed
    info      routine: each settled task (shown with -v), workers started, the queue is empty
    warning   something went wrong and the node copes: a task failed and will be retried, a
              worker crashed and restarts, a broker did not answer
    error     something was lost or needs a person: a task is dead, a worker had to be killed

`--log-format json` writes one JSON object per line, with `time`, `level`, `logger`, `message`,
and for a settled task `task_id`, `task`, `outcome` and `duration_s` (workers log the same way).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import IO, Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TASK_FIELDS = ("task_id", "task", "outcome", "duration_s")
_RESERVED = frozenset(vars(logging.makeLogRecord({})))

task_log = logging.getLogger("fleetinfer.tasks")

# the worker logs failures with their reason; the agent's record of each task is info, except
# for outcomes no worker line reports
_OUTCOME_LEVELS = {"rejected": logging.WARNING, "abandoned": logging.WARNING}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        body.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            body["traceback"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def configure_logging(
    *, verbose: bool, log_format: str = "text", text_format: str = TEXT_FORMAT
) -> None:
    """Root logging on stderr: INFO with `verbose`, else WARNING; text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(text_format)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def announce_json(message: str, **fields: Any) -> None:
    """A line the command always prints (the node's ready and stopped lines), as a JSON log
    record on stderr, whatever the level: with `--log-format json` stderr stays all JSON."""
    body = {"time": round(time.time(), 3), "level": "info", "logger": "fleetinfer.node"}
    body |= {"message": message, "pid": os.getpid(), **fields}
    sys.stderr.write(json.dumps(body, default=str) + "\n")
    sys.stderr.flush()


def log_task(event: dict[str, Any]) -> None:
    """One record for a worker's `task` event (the agent calls it for every settled task)."""
    outcome = str(event.get("outcome", ""))
    fields = {key: event.get(key) for key in TASK_FIELDS}
    duration_s = event.get("duration_s")
    took = f" in {duration_s:.3f} s" if isinstance(duration_s, int | float) else ""
    named = [str(event[k]) for k in ("task", "task_id") if event.get(k)]
    what = "task " + " ".join(named) if named else "a message"
    task_log.log(
        _OUTCOME_LEVELS.get(outcome, logging.INFO),
        "%s %s%s",
        what,
        outcome,
        took,
        extra=fields,
    )


class ProgressLine:
    """`done 120, failed 3, 41.2 tasks/min` rewritten in place on a terminal, twice a second;
    nothing at all when the stream is not a terminal (a log file, a pipe, a container)."""

    def __init__(
        self, stream: IO[str] | None = None, *, interval_s: float = 0.5, wanted: bool = True
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = wanted and _is_tty(self.stream)
        self.interval_s = interval_s
        self._counts = {"done": 0, "failed": 0}
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._shown_at = 0.0

    def record(self, event: dict[str, Any]) -> None:
        """Count a worker event; redraw at most every interval_s."""
        if event.get("event") != "task":
            return
        outcome = event.get("outcome")
        with self._lock:
            if outcome in ("succeeded", "duplicate"):
                self._counts["done"] += 1
            elif outcome in ("dead", "rejected", "malformed"):  # for good, not to be retried
                self._counts["failed"] += 1
            due = time.monotonic() - self._shown_at >= self.interval_s
        if due:
            self.show()

    def text(self) -> str:
        with self._lock:
            done, failed = self._counts["done"], self._counts["failed"]
        minutes = max(time.monotonic() - self._started, 1e-9) / 60
        return f"done {done}, failed {failed}, {done / minutes:.1f} tasks/min"

    def show(self) -> None:
        if not self.enabled:
            return
        self._shown_at = time.monotonic()
        self.stream.write("\r\x1b[2K" + self.text())
        self.stream.flush()

    def close(self) -> None:
        """End the line (the next output starts on a fresh one)."""
        if self.enabled and self._shown_at:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
