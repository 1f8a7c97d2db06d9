"""The `triton` client mode speaks KServe v2 with binary tensors; checked against a minimal
server written here from the protocol's description (the real PyTriton comparison lives in
benchmarks/server_bench.py, which needs Debian's python3.11 with nvidia-pytriton)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from fleetinfer.client import ModelClient
from fleetinfer.errors import InvalidInputError, ServerUnavailableError, UnknownModelError
from fleetinfer.server.kserve import HEADER_LENGTH


class AffineKServe(BaseHTTPRequestHandler):
    """y = 2x + 1 for model `affine`, FP32 input `x`; binary in, binary out."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._send(200 if self.path == "/v2/models/affine/ready" else 400, b"{}")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if not self.path.startswith("/v2/models/affine"):
            self._error(404, "unknown model")
            return
        header_length = int(self.headers[HEADER_LENGTH])
        spec = json.loads(body[:header_length])["inputs"][0]
        if spec["name"] != "x" or spec["datatype"] != "FP32":
            self._error(400, f"input {spec['name']} {spec['datatype']}: expected x FP32")
            return
        x = np.frombuffer(body[header_length:], np.float32).reshape(spec["shape"])
        y = (x * 2 + 1).astype(np.float32).tobytes()
        out = {"outputs": [{"name": "y", "datatype": "FP32", "shape": spec["shape"],
                            "parameters": {"binary_data_size": len(y)}}]}  # fmt: skip
        head = json.dumps(out).encode()
        self._send(200, head + y, {HEADER_LENGTH: str(len(head))})

    def _error(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode())

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def url() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), AffineKServe)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_triton_mode_sends_and_receives_binary_tensors(url: str) -> None:
    client = ModelClient.from_mode("triton", url=url)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    try:
        for _ in range(3):  # the persistent connection is reused
            np.testing.assert_array_equal(client.model("affine").infer({"x": x})["y"], x * 2 + 1)
    finally:
        client.close()


def test_triton_errors_are_typed(url: str) -> None:
    client = ModelClient.from_mode("triton", url=url)
    try:
        with pytest.raises(UnknownModelError, match="no ready model 'nope'"):
            client.model("nope")
        with pytest.raises(InvalidInputError, match="expected x FP32"):
            client.model("affine").infer({"x": np.ones((1, 4), np.int32)})
        with pytest.raises(InvalidInputError, match="Triton takes"):
            client.model("affine").infer({"x": np.ones((1, 4), np.complex64)})
    finally:
        client.close()


def test_triton_mode_without_a_server_is_unavailable() -> None:
    client = ModelClient.from_mode("triton", url="127.0.0.1:9")
    with pytest.raises(ServerUnavailableError, match="no Triton server answers"):
        client.model("affine")


def test_outputs_come_back_in_the_shapes_the_repository_declares(url: str, tmp_path: Any) -> None:
    """Triton returns a one-value-per-sample output as [batch, 1]; given the repository, the
    client gives it back as [batch], as the shared and in-process modes do."""
    folder = tmp_path / "affine"
    folder.mkdir()
    (folder / "config.toml").write_text(
        'name = "affine"\nmax_batch_size = 8\n'
        '[[inputs]]\nname = "x"\ndtype = "float32"\nshape = [-1, 1]\n'
        '[[outputs]]\nname = "y"\ndtype = "float32"\nshape = [-1]\n'
    )
    x = np.arange(3, dtype=np.float32).reshape(3, 1)
    plain = ModelClient.from_mode("triton", url=url)
    declared = ModelClient.from_mode("triton", url=url, repository=tmp_path)
    try:
        assert plain.model("affine").infer({"x": x})["y"].shape == (3, 1)
        y = declared.model("affine").infer({"x": x})["y"]
        np.testing.assert_array_equal(y, x[:, 0] * 2 + 1)
    finally:
        plain.close()
        declared.close()
