"""Amazon SQS broker: `sqs://queue-name?region=us-east-1&endpoint_url=http://127.0.0.1:4566`.

The queue and its dead-letter queue `<name>-dlq` are created when missing, with a RedrivePolicy
whose maxReceiveCount is `max_receives`, so SQS itself moves a message to the DLQ on the receive
that would exceed it. What differs from the other backends, because SQS works this way:

- Times are whole seconds: visibility timeouts, delays and long-poll waits are rounded up.
- Counts in `stats()` are SQS's approximate attributes (eventually consistent, may lag seconds);
  a message released with a delay counts as in flight, not delayed.
- `ack` of a stale receipt is accepted silently: SQS answers success to DeleteMessage with an old
  receipt handle and may or may not delete the message. `release` / `extend_visibility` /
  `dead_letter` on a receipt whose message was deleted raise `ReceiptExpiredError`.
- `dead_letter(receipt, reason)` needs the body, so it works for receipts this broker object
  received (the usual case: only the receiver holds the receipt); it sends the body to the DLQ
  with the reason as a message attribute, then deletes the original.
- `dead_letters()` peeks by receiving from the DLQ and making what it saw visible again; a
  message SQS moved by the RedrivePolicy carries no reason, so it reads
  "exceeded max_receives=N" with receive count N.
- `redrive()` re-sends each dead letter as a new message (SQS gives it a new message id).
- `purge()` is PurgeQueue: real SQS allows one per queue per 60 s.

moto (used by the tests) differs from real SQS in that it accepts any receipt handle a message
ever had for DeleteMessage and ChangeMessageVisibility (real SQS rejects a handle of an
earlier delivery for ChangeMessageVisibility), and its counts are exact.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fleetinfer.aws import import_boto3
from fleetinfer.errors import (
    BrokerUnavailableError,
    ConfigError,
    InputError,
    QueueError,
    ReceiptExpiredError,
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
    raise_if_stale,
)
from fleetinfer.queue.url import BrokerUrl, check_settings

SQS_BATCH = 10
_STALE_CODES = {
    "ReceiptHandleIsInvalid",
    "InvalidReceiptHandle",
    "MessageNotInflight",
    "AWS.SimpleQueueService.MessageNotInflight",
}
_TRANSIENT_CODES = {
    "ThrottlingException",
    "RequestThrottled",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "KmsThrottled",
}
_REASON = "fleetinfer_reason"
_ORIGINAL_ID = "fleetinfer_message_id"
_RECEIVE_COUNT = "fleetinfer_receive_count"
_DEAD_AT = "fleetinfer_dead_at"


def _whole_seconds(seconds: float) -> int:
    return math.ceil(seconds - 1e-9)


def _error_code(exc: Exception) -> str:
    response: dict[str, Any] = getattr(exc, "response", {}) or {}
    return str(response.get("Error", {}).get("Code", ""))


@contextmanager
def _translate_boto_errors(url: str) -> Iterator[None]:
    """botocore errors become ours: stale receipts, unreachable endpoints, bad credentials."""
    from botocore import exceptions as boto_errors

    try:
        yield
    except boto_errors.ClientError as exc:
        code = _error_code(exc)
        if code in _STALE_CODES:
            raise ReceiptExpiredError(
                f"SQS refused the receipt ({code}): the message was deleted or its visibility "
                "timeout passed; it will be (or was) delivered again"
            ) from exc
        if code in _TRANSIENT_CODES:
            raise BrokerUnavailableError(f"SQS broker {url!r} is throttled or down: {exc}") from exc
        raise QueueError(f"SQS broker {url!r} refused the request: {exc}") from exc
    except boto_errors.NoCredentialsError as exc:
        raise ConfigError(
            f"SQS broker {url!r} found no AWS credentials: set AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY or an AWS profile"
        ) from exc
    except boto_errors.BotoCoreError as exc:
        raise BrokerUnavailableError(
            f"SQS broker {url!r} cannot be reached: {exc}; check endpoint_url / region and "
            "the network, then retry"
        ) from exc


@dataclass(frozen=True, slots=True)
class _Held:
    """What this broker object remembers of a delivery it handed out, for `dead_letter`."""

    message: Message
    until: float


class SqsBroker(Broker):
    """One SQS queue and its `<name>-dlq` dead-letter queue."""

    def __init__(
        self,
        queue: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
        max_receives: int = DEFAULT_MAX_RECEIVES,
        url: str | None = None,
    ) -> None:
        self.url = url or f"sqs://{queue}"
        check_settings(self.url, visibility_timeout_s, max_receives)
        if not queue:
            raise ConfigError(f"SQS URL {self.url!r} names no queue: expected sqs://queue-name")
        self.queue = queue
        self.visibility_timeout_s = visibility_timeout_s
        self.max_receives = max_receives
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._client = self._make_client(region, endpoint_url)
        self._dlq_url = self._ensure_queue(f"{queue}-dlq", {})
        self._queue_url = self._ensure_queue(queue, self._queue_attributes())

    @classmethod
    def from_url(
        cls, url: str, *, visibility_timeout_s: float | None = None, max_receives: int | None = None
    ) -> SqsBroker:
        """Open `sqs://queue-name?region=us-east-1&endpoint_url=http://host:port`."""
        parsed = BrokerUrl.parse(
            url,
            accepted_keys=("region", "endpoint_url"),
            visibility_timeout_s=visibility_timeout_s,
            max_receives=max_receives,
        )
        return cls(
            parsed.parts.netloc + parsed.parts.path.rstrip("/"),
            region=parsed.options.get("region"),
            endpoint_url=parsed.options.get("endpoint_url"),
            visibility_timeout_s=parsed.visibility_timeout_s,
            max_receives=parsed.max_receives,
            url=url,
        )

    def _make_client(self, region: str | None, endpoint_url: str | None) -> Any:
        boto3 = import_boto3("the SQS broker")
        from botocore.config import Config

        config = Config(retries={"mode": "standard"}, connect_timeout=5, read_timeout=40)
        with _translate_boto_errors(self.url):
            return boto3.client("sqs", region_name=region, endpoint_url=endpoint_url, config=config)

    def _queue_attributes(self) -> dict[str, str]:
        with _translate_boto_errors(self.url):
            arn = self._client.get_queue_attributes(
                QueueUrl=self._dlq_url, AttributeNames=["QueueArn"]
            )["Attributes"]["QueueArn"]
        policy = {"deadLetterTargetArn": arn, "maxReceiveCount": self.max_receives}
        return {
            "VisibilityTimeout": str(_whole_seconds(self.visibility_timeout_s)),
            "RedrivePolicy": json.dumps(policy),
        }

    def _ensure_queue(self, name: str, attributes: dict[str, str]) -> str:
        """The queue's URL, creating it when missing and (re)applying our attributes."""
        with _translate_boto_errors(self.url):
            try:
                queue_url: str = self._client.get_queue_url(QueueName=name)["QueueUrl"]
            except self._client.exceptions.QueueDoesNotExist:
                return str(
                    self._client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
                )
            if attributes:
                self._client.set_queue_attributes(QueueUrl=queue_url, Attributes=attributes)
            return queue_url

    # -- send --------------------------------------------------------------------------------

    def send_raw_batch(
        self,
        bodies: Sequence[str],
        *,
        delay_s: float = 0.0,
        dedup_ids: Sequence[str] | None = None,
    ) -> list[str]:
        """A standard queue has no deduplication: `dedup_ids` are checked, then every body is
        sent (the worker skips a task whose result already succeeded)."""
        check_dedup_ids(bodies, dedup_ids)
        check_delay(delay_s)
        for body in bodies:
            check_body_size(body)
        ids: list[str] = []
        for start in range(0, len(bodies), SQS_BATCH):
            ids += self._send_chunk(self._queue_url, bodies[start : start + SQS_BATCH], delay_s)
        return ids

    def _send_chunk(
        self,
        queue_url: str,
        bodies: Sequence[str],
        delay_s: float,
        attributes: Sequence[dict[str, Any]] | None = None,
    ) -> list[str]:
        entries: list[dict[str, Any]] = []
        for i, body in enumerate(bodies):
            entry = {"Id": str(i), "MessageBody": body, "DelaySeconds": _whole_seconds(delay_s)}
            if attributes:
                entry["MessageAttributes"] = attributes[i]
            entries.append(entry)
        with _translate_boto_errors(self.url):
            reply = self._client.send_message_batch(QueueUrl=queue_url, Entries=entries)
        if reply.get("Failed"):
            raise QueueError(f"SQS broker {self.url!r} refused messages: {reply['Failed']}")
        by_index = {int(ok["Id"]): str(ok["MessageId"]) for ok in reply["Successful"]}
        return [by_index[i] for i in range(len(bodies))]

    # -- receive -----------------------------------------------------------------------------

    def receive(
        self,
        *,
        max_messages: int = 1,
        wait_s: float = 0.0,
        visibility_timeout_s: float | None = None,
    ) -> list[Message]:
        check_receive_args(max_messages, wait_s, visibility_timeout_s)
        timeout_s = _whole_seconds(visibility_timeout_s or self.visibility_timeout_s)
        messages = self._receive_chunk(min(max_messages, SQS_BATCH), wait_s, timeout_s)
        while len(messages) < max_messages and len(messages) % SQS_BATCH == 0 and messages:
            more = self._receive_chunk(min(max_messages - len(messages), SQS_BATCH), 0, timeout_s)
            if not more:
                break
            messages += more
        self._remember(messages, time.time() + timeout_s)
        return messages

    def _receive_chunk(self, count: int, wait_s: float, timeout_s: int) -> list[Message]:
        with _translate_boto_errors(self.url):
            reply = self._client.receive_message(
                QueueUrl=self._queue_url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=_whole_seconds(wait_s),
                VisibilityTimeout=timeout_s,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            )
        return [
            Message(
                id=m["MessageId"],
                body=m["Body"],
                receipt=m["ReceiptHandle"],
                receive_count=int(m["Attributes"]["ApproximateReceiveCount"]),
                sent_at=int(m["Attributes"]["SentTimestamp"]) / 1000,
            )
            for m in reply.get("Messages", [])
        ]

    def _remember(self, messages: list[Message], until: float) -> None:
        now = time.time()
        with self._lock:
            for receipt in [r for r, held in self._held.items() if held.until < now]:
                del self._held[receipt]
            for message in messages:
                self._held[message.receipt] = _Held(message, until)

    def _forget(self, receipt: str) -> _Held | None:
        with self._lock:
            return self._held.pop(receipt, None)

    # -- settle ------------------------------------------------------------------------------

    def ack(self, receipt: str) -> None:
        """Delete the message; SQS accepts a stale receipt silently (see the module doc)."""
        self._check_receipt(receipt)
        with _translate_boto_errors(self.url):
            self._client.delete_message(QueueUrl=self._queue_url, ReceiptHandle=receipt)
        self._forget(receipt)

    def ack_batch(self, receipts: Sequence[str]) -> None:
        """DeleteMessageBatch, ten at a time; receipts SQS refuses raise together at the end."""
        stale: list[str] = []
        for start in range(0, len(receipts), SQS_BATCH):
            chunk = receipts[start : start + SQS_BATCH]
            for receipt in chunk:
                self._check_receipt(receipt)
            entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)]
            with _translate_boto_errors(self.url):
                reply = self._client.delete_message_batch(QueueUrl=self._queue_url, Entries=entries)
            stale += [chunk[int(failed["Id"])] for failed in reply.get("Failed", [])]
            for receipt in chunk:
                self._forget(receipt)
        raise_if_stale(stale)

    def release(self, receipt: str, *, delay_s: float = 0.0) -> None:
        check_delay(delay_s, limit_s=12 * 3600.0)
        self._change_visibility(receipt, _whole_seconds(delay_s))
        self._forget(receipt)

    def extend_visibility(self, receipt: str, timeout_s: float) -> None:
        check_receive_args(1, 0.0, timeout_s)
        self._change_visibility(receipt, _whole_seconds(timeout_s))
        with self._lock:
            held = self._held.get(receipt)
            if held is not None:
                self._held[receipt] = _Held(held.message, time.time() + timeout_s)

    def _change_visibility(self, receipt: str, timeout_s: int) -> None:
        self._check_receipt(receipt)
        with _translate_boto_errors(self.url):
            self._client.change_message_visibility(
                QueueUrl=self._queue_url, ReceiptHandle=receipt, VisibilityTimeout=timeout_s
            )

    def dead_letter(self, receipt: str, reason: str) -> None:
        with self._lock:
            held = self._held.get(receipt)
        if held is None:
            raise InputError(
                f"SQS broker {self.url!r} cannot dead-letter receipt {receipt[:24]!r}...: this "
                "broker object did not receive it (or its visibility timeout passed), and SQS "
                "cannot return a body by receipt; dead-letter from the receiving broker"
            )
        self._change_visibility(receipt, _whole_seconds(self.visibility_timeout_s))
        message = held.message
        attributes = {
            _REASON: {"DataType": "String", "StringValue": reason or "-"},
            _ORIGINAL_ID: {"DataType": "String", "StringValue": message.id},
            _RECEIVE_COUNT: {"DataType": "Number", "StringValue": str(message.receive_count)},
            _DEAD_AT: {"DataType": "Number", "StringValue": repr(time.time())},
        }
        self._send_chunk(self._dlq_url, [message.body], 0.0, [attributes])
        self.ack(receipt)

    # -- dead letters, stats -----------------------------------------------------------------

    def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        """Peek at the DLQ: receive what is there, then make it visible again at once."""
        seen = self._take_dead(limit)
        self._return_dead([m["ReceiptHandle"] for m in seen])
        letters = [self._dead_letter(m) for m in seen]
        return sorted(letters, key=lambda d: d.dead_at)

    def _take_dead(self, limit: int) -> list[dict[str, Any]]:
        taken: dict[str, dict[str, Any]] = {}
        while len(taken) < limit:
            with _translate_boto_errors(self.url):
                reply = self._client.receive_message(
                    QueueUrl=self._dlq_url,
                    MaxNumberOfMessages=min(SQS_BATCH, limit - len(taken)),
                    VisibilityTimeout=30,
                    MessageSystemAttributeNames=["SentTimestamp"],
                    MessageAttributeNames=["All"],
                )
            fresh = [m for m in reply.get("Messages", []) if m["MessageId"] not in taken]
            if not fresh:
                break
            taken.update((m["MessageId"], m) for m in fresh)
        return list(taken.values())

    def _return_dead(self, receipts: list[str]) -> None:
        for start in range(0, len(receipts), SQS_BATCH):
            entries = [
                {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": 0}
                for i, r in enumerate(receipts[start : start + SQS_BATCH])
            ]
            with _translate_boto_errors(self.url):
                self._client.change_message_visibility_batch(
                    QueueUrl=self._dlq_url, Entries=entries
                )

    def _dead_letter(self, raw: dict[str, Any]) -> DeadLetter:
        attrs = {k: v["StringValue"] for k, v in raw.get("MessageAttributes", {}).items()}
        sent_at = int(raw["Attributes"]["SentTimestamp"]) / 1000
        return DeadLetter(
            id=attrs.get(_ORIGINAL_ID, raw["MessageId"]),
            body=raw["Body"],
            reason=attrs.get(_REASON, f"exceeded max_receives={self.max_receives}"),
            receive_count=int(attrs.get(_RECEIVE_COUNT, self.max_receives)),
            dead_at=float(attrs.get(_DEAD_AT, sent_at)),
        )

    def redrive(self, *, limit: int | None = None) -> int:
        moved = 0
        while limit is None or moved < limit:
            want = SQS_BATCH if limit is None else min(SQS_BATCH, limit - moved)
            batch = self._take_dead(want)
            if not batch:
                break
            self._send_chunk(self._queue_url, [m["Body"] for m in batch], 0.0)
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)
            ]
            with _translate_boto_errors(self.url):
                self._client.delete_message_batch(QueueUrl=self._dlq_url, Entries=entries)
            moved += len(batch)
        return moved

    def stats(self) -> QueueStats:
        """SQS's approximate counts (see the module doc). The age of the oldest message is not a
        queue attribute (it is the CloudWatch metric `ApproximateAgeOfOldestMessage`): None."""
        main = self._attributes(self._queue_url)
        dead = self._attributes(self._dlq_url)
        return QueueStats(
            visible=main["ApproximateNumberOfMessages"],
            in_flight=main["ApproximateNumberOfMessagesNotVisible"],
            delayed=main["ApproximateNumberOfMessagesDelayed"],
            dead=sum(dead.values()),
            oldest_visible_age_s=None,
        )

    def _attributes(self, queue_url: str) -> dict[str, int]:
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        with _translate_boto_errors(self.url):
            reply = self._client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)
        return {name: int(reply["Attributes"].get(name, 0)) for name in names}

    def purge(self) -> None:
        with _translate_boto_errors(self.url):
            self._client.purge_queue(QueueUrl=self._queue_url)
            self._client.purge_queue(QueueUrl=self._dlq_url)
        with self._lock:
            self._held.clear()

    def close(self) -> None:
        self._client.close()

    @staticmethod
    def _check_receipt(receipt: str) -> None:
        if not isinstance(receipt, str) or not receipt:
            raise InputError(
                f"{receipt!r} is not an SQS receipt handle: pass Message.receipt as received"
            )
