"""The KServe v2 / Triton HTTP inference protocol with Triton's binary-data extension.

Used by the `triton` client mode (comparison against a Triton server): a request is a JSON header
followed by the raw bytes of each input (`Inference-Header-Content-Length` says where the JSON
ends); outputs come back the same way. No dependency beyond the standard library.
"""

from __future__ import annotations

import http.client
import json
import math
from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from fleetinfer.errors import (
    FleetinferError,
    InferenceError,
    InvalidInputError,
    MalformedMessageError,
    UnknownModelError,
)
from fleetinfer.untrusted import decode_json

HEADER_LENGTH: Final = "Inference-Header-Content-Length"
DATATYPES: Final = {
    "float32": "FP32",
    "float16": "FP16",
    "float64": "FP64",
    "int64": "INT64",
    "int32": "INT32",
    "int8": "INT8",
    "uint8": "UINT8",
    "bool": "BOOL",
}
NUMPY_DTYPES: Final = {v: np.dtype(k) for k, v in DATATYPES.items()}
MAX_RANK: Final = 32  # numpy's limit is 64; no model output comes near
Tensors = dict[str, np.ndarray[Any, Any]]


def infer_path(model: str, version: int | None) -> str:
    versions = "" if version is None else f"/versions/{version}"
    return f"/v2/models/{model}{versions}/infer"


def encode_request(inputs: Mapping[str, Any]) -> tuple[bytes, int]:
    """The request body and the length of its JSON header."""
    specs, blobs = [], []
    for name, array in inputs.items():
        if not isinstance(array, np.ndarray):
            raise InvalidInputError(
                f"input {name!r} must be a numpy array, got {type(array).__name__}"
            )
        datatype = DATATYPES.get(array.dtype.name)
        if datatype is None:
            raise InvalidInputError(
                f"input {name!r} has dtype {array.dtype}; Triton takes {sorted(DATATYPES)}"
            )
        blob = np.ascontiguousarray(array).tobytes()
        specs.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    header = json.dumps({"inputs": specs, "parameters": {"binary_data_output": True}}).encode()
    return header + b"".join(blobs), len(header)


def decode_response(body: bytes, header_length: int | str | None) -> Tensors:
    """Outputs from a (binary-extension or plain JSON) inference response. The response comes
    from another process over HTTP: anything this client cannot parse (bad JSON, nesting
    deeper than `MAX_JSON_DEPTH`, numbers out of range, sizes that do not add up, wrong types)
    raises `MalformedMessageError`, raised from the original error."""
    try:
        end = _header_end(body, header_length)
        header: Any = decode_json(body[:end], what="the Triton response header")
        return _outputs(header, body, end)
    except MalformedMessageError:
        raise
    except Exception as exc:  # every failure: the response is not one this client can read
        raise MalformedMessageError(
            f"the Triton server sent a response this client cannot parse "
            f"({type(exc).__name__}: {exc}): expected a KServe v2 inference response"
        ) from exc


def _header_end(body: bytes, header_length: int | str | None) -> int:
    if header_length is None or header_length == "":
        return len(body)
    end = int(header_length)
    if not 0 < end <= len(body):
        raise ValueError(f"{HEADER_LENGTH} {end} is outside the body of {len(body)} bytes")
    return end


def _outputs(header: Any, body: bytes, offset: int) -> Tensors:
    if not isinstance(header, dict) or not isinstance(header.get("outputs"), list):
        raise TypeError("the header is not an object with an 'outputs' list")
    outputs: Tensors = {}
    for spec in header["outputs"]:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise TypeError(f"output {spec!r:.80} is not an object with a 'name'")
        dtype = NUMPY_DTYPES[spec["datatype"]]
        shape = _shape(spec)
        parameters = spec.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise TypeError(f"output {spec['name']!r} has parameters {parameters!r:.80}")
        size = parameters.get("binary_data_size")
        if size is None:
            data = spec["data"]
            if not isinstance(data, list) or any(isinstance(v, list | dict) for v in data):
                raise TypeError(f"output {spec['name']!r}: 'data' is not a flat list")
            outputs[spec["name"]] = np.asarray(data, dtype=dtype).reshape(shape)
            continue
        count = math.prod(shape)
        if type(size) is not int or size != count * dtype.itemsize or offset + size > len(body):
            raise ValueError(f"output {spec['name']!r} claims {size!r:.40} bytes for {shape}")
        outputs[spec["name"]] = np.frombuffer(body, dtype, count, offset).reshape(shape)
        offset += size
    return outputs


def _shape(spec: dict[str, Any]) -> tuple[int, ...]:
    shape = spec.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(type(d) is int and 0 <= d < 2**62 for d in shape)
    ):
        raise ValueError(f"output {spec['name']!r} has shape {shape!r:.80}")
    return tuple(shape)


def raise_for_status(response: http.client.HTTPResponse, body: bytes, model: str) -> None:
    """Triton's HTTP errors as our typed errors."""
    if response.status == 200:
        return
    try:
        message = str(decode_json(body, what="the Triton error")["error"])[:500]
    except (MalformedMessageError, KeyError, TypeError):
        message = body[:500].decode(errors="replace")
    text = f"Triton answered {response.status} for model {model!r}: {message}"
    lowered = message.lower()
    error: type[FleetinferError]
    if response.status == 404 or "unknown model" in lowered or "not found" in lowered:
        error = UnknownModelError
    elif response.status == 400:
        error = InvalidInputError
    else:
        error = InferenceError
    raise error(text)
