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


def decode_response(body: bytes, header_length: int | None) -> Tensors:
    """Outputs from a (binary-extension or plain JSON) inference response."""
    try:
        header = json.loads(body[: header_length or len(body)])
        outputs: Tensors = {}
        offset = header_length or len(body)
        for spec in header["outputs"]:
            dtype = NUMPY_DTYPES[spec["datatype"]]
            shape = tuple(int(d) for d in spec["shape"])
            size = spec.get("parameters", {}).get("binary_data_size")
            if size is None:
                outputs[spec["name"]] = np.asarray(spec["data"], dtype=dtype).reshape(shape)
                continue
            if size != math.prod(shape) * dtype.itemsize or offset + size > len(body):
                raise ValueError(f"output {spec['name']!r} claims {size} bytes for {shape}")
            outputs[spec["name"]] = np.frombuffer(body, dtype, math.prod(shape), offset).reshape(
                shape
            )
            offset += size
    except (ValueError, KeyError, TypeError) as exc:
        raise MalformedMessageError(
            f"the Triton server sent a response this client cannot parse: {exc}"
        ) from exc
    return outputs


def raise_for_status(response: http.client.HTTPResponse, body: bytes, model: str) -> None:
    """Triton's HTTP errors as our typed errors."""
    if response.status == 200:
        return
    try:
        message = str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
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
