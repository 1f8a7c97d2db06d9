"""SqsBroker specifics against a real moto server: queues and RedrivePolicy created when
missing, whole-second rounding, dead-lettering needs the receiving broker, unreachable endpoint."""

from __future__ import annotations

import json
import socket

import boto3
import pytest

from fleetinfer.errors import BrokerUnavailableError, InputError
from fleetinfer.queue import open_broker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_queue_and_dead_letter_queue_are_created_with_a_redrive_policy(
    moto_endpoint: str, unique_name: str
) -> None:
    url = f"sqs://{unique_name}?region=us-east-1&endpoint_url={moto_endpoint}"
    with open_broker(url, visibility_timeout_s=0.3, max_receives=4):
        pass
    client = boto3.client("sqs", region_name="us-east-1", endpoint_url=moto_endpoint)
    queue_url = client.get_queue_url(QueueName=unique_name)["QueueUrl"]
    dlq_url = client.get_queue_url(QueueName=f"{unique_name}-dlq")["QueueUrl"]
    attributes = client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])
    policy = json.loads(attributes["Attributes"]["RedrivePolicy"])
    dlq_arn = client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    assert policy["maxReceiveCount"] == 4
    assert policy["deadLetterTargetArn"] == dlq_arn["Attributes"]["QueueArn"]
    assert attributes["Attributes"]["VisibilityTimeout"] == "1"  # whole seconds, rounded up
    client.close()


def test_dead_letter_of_a_receipt_this_broker_did_not_receive_is_an_input_error(
    moto_endpoint: str, unique_name: str
) -> None:
    url = f"sqs://{unique_name}?region=us-east-1&endpoint_url={moto_endpoint}"
    with open_broker(url) as receiver, open_broker(url) as other:
        receiver.send("x")
        [message] = receiver.receive(wait_s=1)
        with pytest.raises(InputError, match="did not receive it"):
            other.dead_letter(message.receipt, "bad")
        receiver.dead_letter(message.receipt, "bad")
        assert [d.reason for d in other.dead_letters()] == ["bad"]


def test_unreachable_endpoint_is_a_broker_unavailable_error() -> None:
    url = f"sqs://q?region=us-east-1&endpoint_url=http://127.0.0.1:{_free_port()}"
    with pytest.raises(BrokerUnavailableError, match="cannot be reached"):
        open_broker(url)
