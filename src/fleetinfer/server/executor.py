"""One loaded model version and its dynamic batcher.

A request whose model is idle runs at once on the connection thread that read it (no hand-off).
When every instance is busy, requests queue; each batcher thread (one per configured instance)
takes whatever is queued and compatible (same non-batch shapes), up to the largest of the
`preferred_batch_sizes` (else `max_batch_size`), and runs it as one batch: it merges what is
already there and never waits for more (`max_queue_delay_us = 0`, the measured best on CPU); a
positive delay makes it wait that long for a fuller batch. On the development VM's CPU a merged
batch of CDNet runs 1.04 to 1.17 times faster per sample than its parts (batch 2 to 8,
`server_bench.py`'s batching row), `cdnet-l` no faster at all: merging what is queued is worth
it, waiting for more is not. The memory ONNX Runtime keeps for activations grows with the
largest batch it has run: a preferred size caps that memory, and a single request above it runs
as even slices of at most that size, side by side on the instances that are idle, and on those
that free up while it runs, as long as nothing is queued. Outputs are written straight into each
client's region and each client gets its own reply. A failed merged batch is retried request by
request, so one bad request cannot fail its neighbours. A merged batch is gathered into its
batcher thread's own buffer (`Staging`: no allocation per execution), and a request whose layout
has a direct plan gets its rows copied into the plan's output views and the plan's encoded reply
(no encoding per request); with the C lane, a kept request its lane found the model busy for goes
straight to `submit` (`Connection._submit_kept`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fleetinfer.errors import FleetinferError
from fleetinfer.server.metrics import ModelStats
from fleetinfer.server.protocol import InferReply, OutputSpaceError, TensorRef, aligned, encode
from fleetinfer.server.repository import DTYPES
from fleetinfer.server.session import OrtModel, Tensors, even_slices, joined
from fleetinfer.server.shm import SharedRegion

log = logging.getLogger(__name__)
DIRECT_OUTPUT_MIN_BYTES = 256 * 1024  # below this a copy is cheaper than a fresh ORT I/O binding
_DTYPE_NAMES = {np.dtype(t): name for name, t in DTYPES.items()}


class ReplySink(Protocol):
    """Where a request's answer goes: the connection that sent it."""

    def reply_ok(self, request_id: int, body: InferReply | bytes) -> None:
        """Answer with a reply, or with one already encoded (`protocol.encode`)."""

    def reply_error(self, request_id: int, exc: FleetinferError) -> None:
        """Answer with an error the client raises as its own class."""


@dataclass(slots=True)
class DirectPlan:
    """One request layout run straight into its client's window: an ONNX Runtime I/O binding of
    the input and output views, and the reply, both reused while the client repeats the request."""

    binding: Any  # onnxruntime.IOBinding
    reply: bytes  # the encoded `InferReply`: the same for every run
    outputs: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)  # views, the region
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(slots=True)
class PlanSlot:
    """Where a cached request layout keeps its `DirectPlan` once the first run has made it."""

    plan: DirectPlan | None = None


@dataclass(slots=True)
class Pending:
    """A validated request: its inputs are views of the client's region."""

    sink: ReplySink
    request_id: int
    inputs: Tensors
    batch: int
    region: SharedRegion
    window_offset: int
    window_bytes: int
    enqueued_ns: int
    slot: PlanSlot | None = None

    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(a.shape[1:] for a in self.inputs.values())


class Spread:
    """The slices of one large request, each taken once, by whichever instance asks next."""

    def __init__(self, slices: list[Tensors]) -> None:
        self.slices = slices
        self.error: BaseException | None = None  # the first slice that failed
        self.finished = threading.Event()  # every slice has run (or failed)
        self._results: list[Tensors | None] = [None] * len(slices)
        self._taken = 0
        self._unfinished = len(slices)
        self._lock = threading.Lock()

    def has_slices_left(self) -> bool:
        return self._taken < len(self.slices)

    def work(self, run: Callable[[Tensors], Tensors]) -> None:
        """Run untaken slices until none is left."""
        while (i := self._take()) is not None:
            try:
                self._results[i] = run(self.slices[i])
            except BaseException as exc:
                self.error = self.error or exc
            finally:
                with self._lock:
                    self._unfinished -= 1
                    if not self._unfinished:
                        self.finished.set()

    def results(self) -> list[Tensors]:
        return [r for r in self._results if r is not None]

    def _take(self) -> int | None:
        with self._lock:
            if self._taken >= len(self.slices):
                return None
            self._taken += 1
            return self._taken - 1


class ModelExecutor:
    """Runs one `OrtModel` for many connections, batching what queues up."""

    def __init__(self, model: OrtModel, stats: ModelStats, *, instances: int | None = None) -> None:
        self.model, self.config, self.stats = model, model.config, stats
        self.version = model.model.version
        self.instances = max(1, instances or self.config.instance_count)
        self.batchable = model.batchable
        self.delay_ns = self.config.batching.max_queue_delay_us * 1000
        preferred = self.config.batching.preferred_batch_sizes
        self.merge_limit = max(preferred) if preferred else self.config.max_batch_size
        self._direct = self.batchable and all(-1 not in s.shape[1:] for s in self.config.outputs)
        self._queue: deque[Pending] = deque()
        self._lock = threading.Lock()  # taken directly (C), not through `_cond` (Python calls)
        self._cond = threading.Condition(self._lock)
        self._busy = 0
        self._closed = False
        self._helpers: ThreadPoolExecutor | None = None  # runs slices on idle instances
        self._spreads: list[Spread] = []  # sliced requests running now
        self._threads = [
            threading.Thread(
                target=self._serve_queue, name=f"batcher-{self.config.name}-{i}", daemon=True
            )
            for i in range(self.instances)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, pending: Pending) -> bool:
        """Run or queue `pending`; False if this executor was closed (re-resolve the model)."""
        with self._lock:
            if self._closed:
                return False
            inline = self._busy < self.instances and not self._queue and self.delay_ns == 0
            if inline:
                self._busy += 1
            else:
                self._queue.append(pending)
                self._cond.notify()
        if inline:
            try:
                self.execute([pending])
            finally:
                self._release()
        return True

    def run_planned(
        self, plan: DirectPlan, region: SharedRegion, samples: int, sink: ReplySink, request_id: int
    ) -> bool:
        """The fast lane of a request layout that has run before: when an instance is idle and
        nothing queues, run its direct plan on the calling thread and answer. False, with
        nothing done, otherwise or on any error: the caller then submits the request as usual,
        which checks, runs and answers it (errors included) the long way."""
        try:
            region.check_intact()
        except Exception:
            return False
        if not self.run_direct(plan, samples):
            return False
        sink.reply_ok(request_id, plan.reply)
        return True

    def run_direct(self, plan: DirectPlan, samples: int) -> bool:
        """`run_planned` once the region is checked, without the answer (the caller sends
        `plan.reply`): the whole of the fast lane's Python when the C lane serves it."""
        with self._lock:
            if self._busy >= self.instances or self._queue or self._closed or self.delay_ns:
                return False
            self._busy += 1
        try:
            start_ns = time.perf_counter_ns()
            if not self._run_bound(plan):
                return False
        except Exception:
            return False
        finally:
            self._release()
        compute_us = (time.perf_counter_ns() - start_ns) // 1000
        self.stats.executed(requests=1, samples=samples, queue_us=0, compute_us=compute_us)
        return True

    def close(self) -> None:
        """Accept nothing new; queued requests still run, then the batcher threads exit."""
        with self._lock:
            self._closed = True
            self._cond.notify_all()
            helpers, self._helpers = self._helpers, None
        if helpers is not None:
            helpers.shutdown(wait=False)

    def join(self, timeout_s: float) -> None:
        for thread in self._threads:
            thread.join(timeout_s)

    def _release(self, instances: int = 1) -> None:
        """Give back `instances`: to the batchers when requests are queued, else to a sliced
        request still running whose slices are not all taken (they help it), else idle."""
        spread = self._reassign(instances)
        if spread is not None:
            self._start_helpers(spread, instances)

    def _reassign(self, instances: int) -> Spread | None:
        """Free `instances`, or keep them for the sliced request they should help (returned)."""
        with self._lock:
            self._busy -= instances
            if self._queue or self._closed:  # wake batchers only when there is work for them
                self._cond.notify(instances)
                return None
            if not self._spreads:
                return None
            spread = self._spread_with_slices_left()
            if spread is not None:
                self._busy += instances
            return spread

    def _start_helpers(self, spread: Spread, instances: int) -> None:
        """One helper thread per claimed instance; a claim no thread could take is given back."""
        started = 0
        try:
            pool = self._helper_pool()
            for _ in range(instances):
                pool.submit(self._help, spread)
                started += 1
        except RuntimeError:  # the pool shut down: this executor closed meanwhile
            with self._lock:
                self._busy -= instances - started

    def _serve_queue(self) -> None:
        staging = Staging()  # this thread's buffer for merged inputs
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self.execute(batch, staging)
            except Exception:  # never let a batcher thread die
                log.exception("batch of %s failed unexpectedly", self.config.name)
            finally:
                self._release()

    def _next_batch(self) -> list[Pending] | None:
        with self._lock:
            while True:
                while not (self._queue and self._busy < self.instances):
                    if self._closed and not self._queue:
                        return None
                    self._cond.wait()
                self._wait_for_fuller_batch()
                if self._queue and self._busy < self.instances:  # another batcher took it
                    self._busy += 1
                    return self._take_batch()

    def _wait_for_fuller_batch(self) -> None:
        if self.delay_ns == 0:
            return
        deadline_ns = self._queue[0].enqueued_ns + self.delay_ns
        while not self._closed and self._queued_samples() < self.merge_limit:
            left_s = (deadline_ns - time.perf_counter_ns()) / 1e9
            if left_s <= 0:
                return
            self._cond.wait(left_s)

    def _queued_samples(self) -> int:
        return sum(p.batch for p in self._queue)

    def _take_batch(self) -> list[Pending]:
        first = self._queue.popleft()
        batch, total = [first], first.batch
        if not self.batchable:
            return batch
        key, kept = first.shapes(), deque[Pending]()
        while self._queue:
            p = self._queue.popleft()
            if p.shapes() == key and total + p.batch <= self.merge_limit:
                batch.append(p)
                total += p.batch
            else:
                kept.append(p)
        self._queue = kept
        return batch

    def execute(self, batch: list[Pending], staging: Staging | None = None) -> None:
        """Run `batch` as one model execution and answer each request; merged inputs are
        copied into `staging` (a batcher thread's own buffer) when given."""
        start_ns = time.perf_counter_ns()
        try:
            for p in batch:  # right before the inputs are read: no region may have shrunk
                p.region.check_intact()
            small = len(batch) == 1 and batch[0].batch <= self.merge_limit
            if small and self._try_direct(batch[0], start_ns):
                return
            inputs = staging.merged(batch) if staging is not None else _merged_inputs(batch)
            outputs = self._run_in_chunks(inputs)
        except FleetinferError as exc:
            self._fail(batch, exc)
            return
        except Exception as exc:  # a server bug: answer it, never leave a client waiting
            log.exception("execution of %s failed unexpectedly", self.config.name)
            self._fail(batch, FleetinferError(f"internal server error: {exc!r}"))
            return
        self._account(batch, start_ns, (time.perf_counter_ns() - start_ns) // 1000)
        if len(batch) == 1:
            self._answer(batch[0], outputs)
            return
        row = 0
        for p in batch:
            part = {n: o[row : row + p.batch] for n, o in outputs.items()}
            row += p.batch
            if not _answer_planned(p, part):
                self._answer(p, part)

    def _run_in_chunks(self, inputs: Tensors) -> Tensors:
        """One run, or, for a request above the merge limit, one run per slice of at most that
        many samples, as few slices as that takes, of even sizes: the activation memory ONNX
        Runtime keeps stays that of the limit. The slices are taken one at a time by this thread
        and by every instance that is idle, now or once it frees up, while nothing is queued."""
        total = next(iter(inputs.values())).shape[0] if self.batchable else 0
        if total <= self.merge_limit:
            return self.model.run(inputs)
        spread = Spread(even_slices(inputs, self.merge_limit))
        with self._lock:
            self._spreads.append(spread)
            helpers = self._claim_idle(len(spread.slices) - 1)
        try:
            self._start_helpers(spread, helpers)
            spread.work(self.model.run)
        finally:
            with self._lock:
                self._spreads.remove(spread)
        spread.finished.wait()  # slices other instances took: they answer shortly
        if spread.error is not None:
            raise spread.error
        return joined(spread.results())

    def _help(self, spread: Spread) -> None:
        """On a helper thread holding one instance: run slices of `spread`, then of any other
        sliced request with slices left, then give the instance back."""
        current: Spread | None = spread
        while current is not None:
            current.work(self.model.run)
            current = self._reassign(1)

    def _spread_with_slices_left(self) -> Spread | None:
        return next((sp for sp in self._spreads if sp.has_slices_left()), None)

    def _claim_idle(self, wanted: int) -> int:
        """Claim up to `wanted` idle instances (none while requests are queued); under the lock."""
        if self._queue or self._closed:
            return 0
        claimed = max(0, min(wanted, self.instances - self._busy))
        self._busy += claimed
        return claimed

    def _helper_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._helpers is None:
                self._helpers = ThreadPoolExecutor(
                    self.instances, thread_name_prefix=f"slices-{self.config.name}"
                )
            return self._helpers

    def _fail(self, batch: list[Pending], exc: FleetinferError) -> None:
        if len(batch) > 1:
            for p in batch:  # isolate the culprit: one bad request must not fail the others
                self.execute([p])
            return
        self.stats.failed()
        batch[0].sink.reply_error(batch[0].request_id, exc)

    def _account(self, batch: list[Pending], start_ns: int, compute_us: int) -> None:
        queue_us = sum(start_ns - p.enqueued_ns for p in batch) // 1000
        samples = sum(p.batch for p in batch)
        self.stats.executed(
            requests=len(batch), samples=samples, queue_us=queue_us, compute_us=compute_us
        )

    def _answer(self, p: Pending, outputs: Mapping[str, np.ndarray[Any, Any]]) -> None:
        try:
            refs = write_outputs(p, outputs)
        except Exception as exc:
            error = exc if isinstance(exc, FleetinferError) else FleetinferError(f"{exc!r}")
            if not isinstance(exc, OutputSpaceError):
                self.stats.failed()
            p.sink.reply_error(p.request_id, error)
            return
        p.sink.reply_ok(p.request_id, InferReply(version=self.version, outputs=refs))

    def _try_direct(self, p: Pending, start_ns: int) -> bool:
        """Let ONNX Runtime write the outputs straight into the client's region: always for a
        cached layout (its binding is reused), for others only when the outputs are large."""
        if not self._direct:
            return False
        plan = p.slot.plan if p.slot is not None else None
        if plan is None:
            plan = self._plan(p, cached=p.slot is not None)
            if plan is None:
                return False
            if p.slot is not None:
                p.slot.plan = plan
        try:
            if not self._run_bound(plan):
                return False  # the same layout already runs (a client pipelining): copy this one
        except Exception as exc:  # e.g. the model's output shape is not the configured one
            log.warning(
                "%s: direct output disabled, falling back to copies: %s", self.config.name, exc
            )
            self._direct = False
            if p.slot is not None:
                p.slot.plan = None
            return False
        self._account([p], start_ns, (time.perf_counter_ns() - start_ns) // 1000)
        p.sink.reply_ok(p.request_id, plan.reply)
        return True

    def _run_bound(self, plan: DirectPlan) -> bool:
        """Run `plan`'s I/O binding; False, not run, while another thread runs the same layout.
        A failed run raises: the fast lane and the long way differ in what it means."""
        if not plan.lock.acquire(blocking=False):
            return False
        try:
            self.model.session.run_with_iobinding(plan.binding)
        finally:
            plan.lock.release()
        return True

    def _plan(self, p: Pending, *, cached: bool) -> DirectPlan | None:
        shapes = [(s, (p.batch, *s.shape[1:])) for s in self.config.outputs]
        layout = _layout([(shape, s.numpy_dtype) for s, shape in shapes])
        if layout[-1] > p.window_bytes or (not cached and layout[-1] < DIRECT_OUTPUT_MIN_BYTES):
            return None
        binding = self.model.session.io_binding()  # `execute` checked the region just before
        for name, array in p.inputs.items():  # by address: each run reads the region afresh
            address = array.__array_interface__["data"][0]
            binding.bind_input(name, "cpu", 0, array.dtype, list(array.shape), address)
        refs, views = [], []
        for (s, shape), off in zip(shapes, layout, strict=False):
            view = p.region.view(p.window_offset + off, s.numpy_dtype, shape)
            views.append(view)
            pointer = view.__array_interface__["data"][0]
            binding.bind_output(s.name, "cpu", 0, view.dtype, list(shape), pointer)
            refs.append(_ref(s.name, view, p.window_offset + off))
        reply = encode(InferReply(version=self.version, outputs=tuple(refs)))
        outputs = {s.name: view for (s, _), view in zip(shapes, views, strict=True)}
        return DirectPlan(binding, reply, outputs)


class Staging:
    """A batcher thread's buffers for merged inputs, one per input name, kept from one merge
    to the next (a merge of 8 CDNet windows is 4.7 MB: no fresh allocation and page faults per
    execution); a buffer grows, or is replaced when the shape or dtype changes."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray[Any, Any]] = {}

    def merged(self, batch: list[Pending]) -> Tensors:
        if len(batch) == 1:
            return batch[0].inputs
        return {
            name: self._concatenated(name, [p.inputs[name] for p in batch])
            for name in batch[0].inputs
        }

    def _concatenated(self, name: str, parts: list[np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
        rows, first = sum(a.shape[0] for a in parts), parts[0]
        buffer = self._buffers.get(name)
        fits = buffer is not None and buffer.shape[1:] == first.shape[1:]
        if buffer is None or not fits or buffer.dtype != first.dtype or buffer.shape[0] < rows:
            buffer = self._buffers[name] = np.empty((rows, *first.shape[1:]), first.dtype)
        target = buffer[:rows]
        np.concatenate(parts, out=target)
        return target


def _answer_planned(p: Pending, part: Mapping[str, np.ndarray[Any, Any]]) -> bool:
    """Answer a request of a merged batch through its layout's direct plan, if it has one: its
    rows copied into the plan's output views and the plan's encoded reply sent (the same bytes
    `write_outputs` would encode). False, nothing sent, when there is no plan or it does not fit
    (the caller then answers the long way)."""
    plan = p.slot.plan if p.slot is not None else None
    if plan is None or plan.outputs.keys() != part.keys():
        return False
    if any(view.shape != part[name].shape for name, view in plan.outputs.items()):
        return False
    try:
        p.region.check_intact()  # as `write_outputs`: never write into a shrunk region
    except FleetinferError:
        return False  # the long way answers with the error
    for name, view in plan.outputs.items():
        np.copyto(view, part[name])
    p.sink.reply_ok(p.request_id, plan.reply)
    return True


def _merged_inputs(batch: list[Pending]) -> Tensors:
    if len(batch) == 1:
        return batch[0].inputs
    return {name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs}


def _layout(tensors: list[tuple[tuple[int, ...], np.dtype[Any]]]) -> list[int]:
    """Aligned offsets of each tensor in a window, then the total bytes needed."""
    offsets, cursor = [], 0
    for shape, dtype in tensors:
        cursor = aligned(cursor)
        offsets.append(cursor)
        cursor += math.prod(shape) * dtype.itemsize
    return [*offsets, cursor]


def write_outputs(p: Pending, outputs: Mapping[str, np.ndarray[Any, Any]]) -> tuple[TensorRef, ...]:
    """Copy outputs into the request's window of its client's region."""
    arrays = list(outputs.items())
    layout = _layout([(a.shape, a.dtype) for _, a in arrays])
    if layout[-1] > p.window_bytes:
        raise OutputSpaceError(layout[-1])
    p.region.check_intact()
    refs = []
    for (name, array), off in zip(arrays, layout, strict=False):
        target = p.region.view(p.window_offset + off, array.dtype, array.shape)
        np.copyto(target, array)
        refs.append(_ref(name, target, p.window_offset + off))
    return tuple(refs)


def _ref(name: str, array: np.ndarray[Any, Any], offset: int) -> TensorRef:
    return TensorRef(name, _DTYPE_NAMES[array.dtype], tuple(array.shape), offset, array.nbytes)
