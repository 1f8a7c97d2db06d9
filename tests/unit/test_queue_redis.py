"""RedisBroker specifics: the PEL delivery counter is the receive count, Lua scripts ship as
package data, an unreachable server is a BrokerUnavailableError."""

from __future__ import annotations

import socket
import time
from importlib import resources

import pytest
import redis

from fleetinfer.errors import BrokerUnavailableError, InputError
from fleetinfer.queue import open_broker
from fleetinfer.queue.backends.redis import GROUP, RedisBroker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_unreachable_server_is_a_broker_unavailable_error() -> None:
    with pytest.raises(BrokerUnavailableError, match="cannot be reached"):
        open_broker(f"redis://127.0.0.1:{_free_port()}/0?queue=x")


def test_receive_count_is_the_pel_delivery_counter(redis_url: str, unique_name: str) -> None:
    broker = open_broker(f"{redis_url}?queue={unique_name}", visibility_timeout_s=0.3)
    assert isinstance(broker, RedisBroker)
    try:
        broker.send("work")
        broker.receive()
        time.sleep(0.4)
        [message] = broker.receive()
        entry_id = message.receipt.split("/")[0]
        client = redis.Redis.from_url(redis_url)
        [pending] = client.xpending_range(
            f"fleetinfer:{{{unique_name}}}:stream", GROUP, min=entry_id, max=entry_id, count=1
        )
        assert pending["times_delivered"] == message.receive_count == 2
        client.close()
    finally:
        broker.purge()
        broker.close()


def test_lua_scripts_ship_as_package_data() -> None:
    scripts = resources.files("fleetinfer.queue.backends").joinpath("redis_scripts")
    names = {p.name for p in scripts.iterdir()}
    assert {"receive.lua", "settle.lua", "send_delayed.lua", "redrive.lua", "stats.lua"} <= names


def test_receipt_of_another_backend_is_an_input_error(redis_url: str, unique_name: str) -> None:
    with open_broker(f"{redis_url}?queue={unique_name}") as broker:
        with pytest.raises(InputError, match="not a receipt of the Redis broker"):
            broker.ack("12:abcdef")
        broker.purge()


def test_purged_stream_elsewhere_recovers_on_next_receive(redis_url: str, unique_name: str) -> None:
    url = f"{redis_url}?queue={unique_name}"
    with open_broker(url) as first, open_broker(url) as second:
        first.send("x")
        second.purge()
        assert first.receive() == []
        first.send("y")
        assert [m.json() for m in first.receive(wait_s=1)] == ["y"]
        first.purge()
