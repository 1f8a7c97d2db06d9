"""Representative inputs for INT8 calibration and for the accuracy evaluation.

A `CalibrationSource` is any iterable of input dicts (`{"raster": array, ...}`), the model's input
names to arrays with the batch first. Sources here: arrays in memory, `.npz` files on disk (loaded
with `allow_pickle=False`) and random inputs shaped by the model config. The roadchange source,
rasterized windows from generated segments, is the roadchange task plugin (`plugins.py`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fleetinfer.errors import CalibrationError
from fleetinfer.server.repository import ModelConfig

Array = np.ndarray[Any, Any]
Tensors = dict[str, Array]


class CalibrationSource(Protocol):
    """An iterable of input dicts: input name -> array, batch first."""

    def __iter__(self) -> Iterator[Mapping[str, Array]]: ...


class ArraySource:
    """Input dicts held in memory."""

    def __init__(self, batches: Iterable[Mapping[str, Array]]) -> None:
        self.batches = [dict(b) for b in batches]

    def __iter__(self) -> Iterator[Mapping[str, Array]]:
        return iter(self.batches)


class NpzSource:
    """One input dict per `.npz` file: a file, or every `*.npz` of a folder in name order."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        files = sorted(self.path.glob("*.npz")) if self.path.is_dir() else [self.path]
        if not files or not all(f.is_file() for f in files):
            raise CalibrationError(
                f"{self.path}: expected an .npz file or a folder of .npz files (one input dict "
                "each, saved with numpy.savez(path, **inputs))"
            )
        self.files = files

    def __iter__(self) -> Iterator[Mapping[str, Array]]:
        for file in self.files:
            try:
                with np.load(file, allow_pickle=False) as data:
                    yield {name: data[name] for name in data.files}
            except (OSError, ValueError) as exc:
                raise CalibrationError(f"{file}: not a readable .npz of arrays: {exc}") from exc


class RandomSource:
    """`count` batches of standard-normal inputs shaped by the model config (dynamic dims -> 1).

    Not representative of real data: the default evaluation when none is given measures agreement
    with the FP32 source on these inputs, which the manifest says."""

    def __init__(
        self, config: ModelConfig, *, count: int = 16, batch: int = 1, seed: int = 0
    ) -> None:
        self.config, self.count, self.batch, self.seed = config, count, batch, seed

    def __iter__(self) -> Iterator[Mapping[str, Array]]:
        rng = np.random.default_rng(self.seed)
        for _ in range(self.count):
            yield {
                spec.name: _random(rng, spec.numpy_dtype, _concrete(spec.shape, self.batch))
                for spec in self.config.inputs
            }


class ZeroSource:
    """All-zero inputs: a deliberately bad calibration (the accuracy gate must refuse it)."""

    def __init__(self, config: ModelConfig, *, count: int = 4) -> None:
        self.config, self.count = config, count

    def __iter__(self) -> Iterator[Mapping[str, Array]]:
        for _ in range(self.count):
            yield {
                s.name: np.zeros(_concrete(s.shape, 1), dtype=s.numpy_dtype)
                for s in self.config.inputs
            }


def _concrete(shape: Sequence[int], batch: int) -> tuple[int, ...]:
    return tuple(batch if i == 0 and d == -1 else max(d, 1) for i, d in enumerate(shape))


def _random(rng: np.random.Generator, dtype: np.dtype[Any], shape: tuple[int, ...]) -> Array:
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.integers(0, 8, shape).astype(dtype)


def collect(
    source: Iterable[Mapping[str, Array]], config: ModelConfig, *, what: str
) -> list[Tensors]:
    """Materialize a source, checking every dict against the model's inputs."""
    batches = [_checked(dict(b), config, what, i) for i, b in enumerate(source)]
    if not batches:
        raise CalibrationError(f"the {what} source gave no inputs: it must yield at least one dict")
    return batches


def _checked(batch: Tensors, config: ModelConfig, what: str, index: int) -> Tensors:
    names = {s.name for s in config.inputs}
    if set(batch) != names:
        raise CalibrationError(
            f"{what} input #{index} has names {sorted(batch)}, model {config.name!r} takes {sorted(names)}"
        )
    for spec in config.inputs:
        array = np.asarray(batch[spec.name])
        fits = array.ndim == len(spec.shape) and all(
            d in (-1, n) for d, n in zip(spec.shape, array.shape, strict=True)
        )
        if not fits:
            raise CalibrationError(
                f"{what} input #{index} {spec.name!r} has shape {list(array.shape)}, "
                f"model {config.name!r} expects {list(spec.shape)} (-1 = any)"
            )
        batch[spec.name] = np.ascontiguousarray(array, dtype=spec.numpy_dtype)
    return batch


def inputs_sha256(batches: Sequence[Mapping[str, Array]]) -> str:
    """A hash of a calibration set: names, dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256()
    for batch in batches:
        for name in sorted(batch):
            array = np.ascontiguousarray(batch[name])
            digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


class CalibrationReader:
    """ONNX Runtime's `CalibrationDataReader` interface over materialized batches."""

    def __init__(self, batches: Sequence[Tensors]) -> None:
        self._batches = list(batches)
        self._next = 0

    def get_next(self) -> Tensors | None:
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return self._batches[self._next - 1]

    def rewind(self) -> None:
        self._next = 0
