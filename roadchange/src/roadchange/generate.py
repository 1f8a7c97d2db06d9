"""Generate a data set: segments `0..segments-1` of world `seed`, one segment file each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from roadchange.errors import InvalidParameterError
from roadchange.segfile import SUFFIX, write_segment
from roadchange.world import generate_segment, get_preset


def segment_path(out_dir: Path, segment_id: str) -> Path:
    """Where `generate_dataset` writes the segment `segment_id`."""
    return Path(out_dir) / f"{segment_id}{SUFFIX}"


def generate_dataset(
    out_dir: Path,
    *,
    preset: str,
    segments: int,
    seed: int,
    on_progress: Callable[[int], None] | None = None,
    change_probability: float = 0.5,
) -> list[Path]:
    """Write `segments` segment files into `out_dir` (created if missing); return their paths.

    `on_progress(n)` is called after each file with the number of files written so far. The
    output depends only on the arguments: running it twice rewrites identical content.
    """
    get_preset(preset)
    if segments < 1:
        raise InvalidParameterError("segments", segments, "an integer >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for index in range(segments):
        segment = generate_segment(
            seed=seed, index=index, preset=preset, change_probability=change_probability
        )
        path = segment_path(out_dir, segment.segment_id)
        write_segment(path, segment)
        paths.append(path)
        if on_progress is not None:
            on_progress(index + 1)
    return paths
