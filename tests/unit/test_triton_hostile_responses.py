"""The `triton` client against a hostile KServe server (a tiny local HTTP server answering what
each case sets): every response it cannot parse raises `MalformedMessageError`, never
RecursionError, OverflowError, MemoryError or another untyped error, and the client still
works for the next good response."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import numpy as np
import pytest

from fleetinfer.client import ModelClient, TritonModelClient
from fleetinfer.errors import InferenceError, MalformedMessageError
from fleetinfer.server.kserve import HEADER_LENGTH

DEEP = 10_000
GOOD_Y = np.arange(4, dtype=np.float32)


def head(outputs: Any) -> bytes:
    return json.dumps({"outputs": outputs}).encode()


def binary(spec: dict[str, Any], blob: bytes) -> tuple[int, bytes, dict[str, str]]:
    header = head([spec])
    return 200, header + blob, {HEADER_LENGTH: str(len(header))}


def plain(body: bytes | str, status: int = 200) -> tuple[int, bytes, dict[str, str]]:
    return status, body.encode() if isinstance(body, str) else body, {}


Y = {"name": "y", "datatype": "FP32"}
HOSTILE: dict[str, tuple[int, bytes, dict[str, str]]] = {
    "nested arrays": plain("[" * DEEP + "]" * DEEP),
    "nested data": plain(head([{**Y, "shape": [1], "data": []}]).replace(b"[]", b"[" * DEEP)),
    "nested objects": plain('{"outputs": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + "}"),
    "a huge shape": plain(head([{**Y, "shape": [10**30], "data": [1.0]}])),
    "a shape beyond float": plain(
        b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [1e999], "data": [1.0]}]}'
    ),
    "a huge value": plain(
        head([{"name": "y", "datatype": "INT64", "shape": [1], "data": [10**30]}])
    ),
    "a huge integer literal": plain('{"outputs": [' + "9" * 5000 + "]}"),
    "a negative shape": plain(head([{**Y, "shape": [-2, -2], "data": [1.0] * 4}])),
    "a string shape": plain(head([{**Y, "shape": "12", "data": [1.0, 2.0]}])),
    "too many dimensions": plain(head([{**Y, "shape": [1] * 100, "data": [1.0]}])),
    "a huge binary size": binary(
        {**Y, "shape": [4], "parameters": {"binary_data_size": 10**30}}, GOOD_Y.tobytes()
    ),
    "a float binary size": binary(
        {**Y, "shape": [4], "parameters": {"binary_data_size": 16.0}}, GOOD_Y.tobytes()
    ),
    "binary size beyond the body": binary(
        {**Y, "shape": [8], "parameters": {"binary_data_size": 32}}, GOOD_Y.tobytes()
    ),
    "a list for parameters": binary({**Y, "shape": [4], "parameters": [1]}, GOOD_Y.tobytes()),
    "a header length that is not a number": (200, head([]), {HEADER_LENGTH: "twelve"}),
    "a header length beyond the body": (200, head([]), {HEADER_LENGTH: str(10**30)}),
    "a negative header length": (200, head([]), {HEADER_LENGTH: "-5"}),
    "invalid UTF-8": plain(b'{"outputs": [{"name": "\xff\xfe"}]}'),
    "a top-level array": plain("[1, 2]"),
    "outputs not a list": plain('{"outputs": "y"}'),
    "an output that is a number": plain(head([7])),
    "an unknown datatype": plain(
        head([{"name": "y", "datatype": "BYTES", "shape": [1], "data": ["a"]}])
    ),
    "an unhashable datatype": plain(head([{"name": "y", "datatype": [], "shape": [1]}])),
    "data that is not numbers": plain(head([{**Y, "shape": [1], "data": ["x"]}])),
    "data of the wrong length": plain(head([{**Y, "shape": [3], "data": [1.0]}])),
    "empty": plain(b""),
    "nested error body": plain("[" * DEEP + "]" * DEEP, status=500),
}


class Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answer: ClassVar[tuple[int, bytes, dict[str, str]]] = (200, b"{}", {})

    def do_GET(self) -> None:
        self._send(200, b"{}", {})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._send(*type(self).answer)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def client() -> Iterator[TritonModelClient]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    client = ModelClient.from_mode("triton", url=f"127.0.0.1:{httpd.server_address[1]}")
    assert isinstance(client, TritonModelClient)
    yield client
    client.close()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def good_answer() -> tuple[int, bytes, dict[str, str]]:
    return binary({**Y, "shape": [4], "parameters": {"binary_data_size": 16}}, GOOD_Y.tobytes())


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_response_raises_a_typed_error_and_the_next_good_one_is_read(
    client: TritonModelClient, case: str
) -> None:
    Hostile.answer = HOSTILE[case]
    x = {"x": np.ones(4, np.float32)}
    expected = InferenceError if case == "nested error body" else MalformedMessageError
    with pytest.raises(expected) as info:
        client.infer("affine", x)
    if expected is MalformedMessageError:
        assert "Triton" in str(info.value)
        assert info.value.__cause__ is not None or "nests" in str(info.value)
    Hostile.answer = good_answer()
    np.testing.assert_array_equal(client.infer("affine", x)["y"], GOOD_Y)
