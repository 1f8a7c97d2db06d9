"""Turning an `InferRequest` into a validated `Prepared` layout: every check before memory is read.

The order matters: sizes against the request limit, each tensor's dtype, shape, byte count and
alignment, its span against the attached region, the region's file against shrinking, and only then
numpy views of the region, validated against the model config (names, dtypes, shapes, batch).

A worker sends the same request, byte for byte, over and over (same model, shapes and offsets;
only the tensor contents change), so a connection keeps the `Prepared` form of the bodies it has
seen (`PreparedCache`) and skips decoding and validation when one comes again. What could make a
cached layout wrong invalidates it: a new region (the cache is per region), a model loaded,
unloaded or reloaded (the registry's generation), a closed executor (`submit` refuses). The region
file is still checked against shrinking on every request, right before memory is read (by the
executor, once per execution).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fleetinfer.errors import InvalidInputError, PayloadTooLargeError
from fleetinfer.server.executor import ModelExecutor, Pending, PlanSlot, ReplySink
from fleetinfer.server.protocol import InferRequest, TensorRef
from fleetinfer.server.repository import DTYPES
from fleetinfer.server.session import Tensors, validate_inputs
from fleetinfer.server.shm import SharedRegion

MAX_RANK = 16
CACHED_LAYOUTS_MAX = 64


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated request layout: the executor, views of the inputs, the output window."""

    executor: ModelExecutor
    generation: int
    inputs: Tensors
    batch: int
    region: SharedRegion
    window_offset: int
    window_bytes: int
    slot: PlanSlot = field(default_factory=PlanSlot)

    def pending(self, sink: ReplySink, request_id: int) -> Pending:
        """This layout as one request (the executor checks the region before it reads)."""
        return Pending(
            sink=sink,
            request_id=request_id,
            inputs=self.inputs,
            batch=self.batch,
            region=self.region,
            window_offset=self.window_offset,
            window_bytes=self.window_bytes,
            enqueued_ns=time.perf_counter_ns(),
            slot=self.slot,
        )


class PreparedCache:
    """Request bodies already validated on one connection's region, and their layouts."""

    def __init__(self) -> None:
        self._layouts: dict[bytes, Prepared] = {}

    def get(self, body: bytes, generation: int) -> Prepared | None:
        prepared = self._layouts.get(body)
        if prepared is not None and prepared.generation != generation:
            del self._layouts[body]
            return None
        return prepared

    def put(self, body: bytes, prepared: Prepared) -> None:
        if len(self._layouts) >= CACHED_LAYOUTS_MAX:
            self._layouts.clear()  # a client cycling through many layouts: start over
        self._layouts[body] = prepared

    def discard(self, body: bytes) -> None:
        self._layouts.pop(body, None)

    def clear(self) -> None:
        self._layouts.clear()


def prepare(
    executor: ModelExecutor,
    generation: int,
    request: InferRequest,
    region: SharedRegion,
    max_request_bytes: int,
) -> Prepared:
    """Check `request` against limits, the region and the model; views of its inputs, no copy."""
    config = executor.config
    total = sum(max(ref.nbytes, 0) for ref in request.inputs)
    if total > max_request_bytes:
        raise PayloadTooLargeError(
            f"request to model {config.name!r} (split the batch)", total, max_request_bytes
        )
    region.check_span("the output window", request.output_offset, request.output_bytes)
    region.check_intact()
    views = _input_views(request.inputs, region)
    checked = validate_inputs(config, views)
    batch = next(iter(checked.values())).shape[0] if executor.batchable else 1
    return Prepared(
        executor=executor,
        generation=generation,
        inputs=checked,
        batch=batch,
        region=region,
        window_offset=request.output_offset,
        window_bytes=request.output_bytes,
    )


def _input_views(refs: tuple[TensorRef, ...], region: SharedRegion) -> Tensors:
    views: Tensors = {}
    for ref in refs:
        if ref.name in views:
            raise InvalidInputError(f"input {ref.name!r} appears twice in the request")
        views[ref.name] = _view(ref, region)
    return views


def _view(ref: TensorRef, region: SharedRegion) -> np.ndarray[Any, Any]:
    if ref.dtype not in DTYPES:
        raise InvalidInputError(
            f"input {ref.name!r} has dtype {ref.dtype!r}, expected one of {sorted(DTYPES)}"
        )
    dtype = np.dtype(DTYPES[ref.dtype])
    if len(ref.shape) > MAX_RANK or any(not 0 <= d <= region.size_bytes for d in ref.shape):
        raise InvalidInputError(
            f"input {ref.name!r} has shape {list(ref.shape)}: expected at most {MAX_RANK} "
            f"non-negative dimensions, none above the region's {region.size_bytes} bytes"
        )
    expected = math.prod(ref.shape) * dtype.itemsize
    if ref.nbytes != expected:
        raise InvalidInputError(
            f"input {ref.name!r} claims {ref.nbytes} bytes, but shape {list(ref.shape)} of "
            f"{ref.dtype} needs {expected} bytes"
        )
    if ref.offset % dtype.itemsize:
        raise InvalidInputError(
            f"input {ref.name!r} at offset {ref.offset} is not aligned to its {dtype.itemsize}-byte "
            "elements: place tensors at aligned offsets"
        )
    region.check_span(f"input {ref.name!r}", ref.offset, ref.nbytes)
    return region.view(ref.offset, dtype, ref.shape)
