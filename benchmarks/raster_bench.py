"""Rasterizer throughput on one thread: road-aligned windows per second. Prints JSON.

    .venv/bin/python benchmarks/raster_bench.py [--preset default] [--segments 20] [--rounds 7]

Segments are generated first (not timed). Each round rasterizes every window of every segment
(`window_stations` with the default 16 m stride); the headline `windows_per_s` is the median
over rounds of wall-clock throughput, `cpu_windows_per_s` the same from process CPU time (less
sensitive to a busy machine). BLAS/OpenMP pools are pinned to one thread before numpy loads.
The target is 500 windows/s. With `--generate-segments N` it also times generating and writing
N segment files (the cost of `roadchange generate`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
TARGET_WINDOWS_PER_S = 500.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default", choices=["default", "hard"])
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--generate-segments", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.segments < 1 or args.rounds < 1 or args.generate_segments < 0:
        parser.error("--segments and --rounds must be >= 1, --generate-segments >= 0")
    return args


def bench_raster(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from roadchange.raster import CHANNELS, rasterize_windows, window_stations
    from roadchange.world import generate_segment

    segments = [
        generate_segment(seed=args.seed, index=i, preset=args.preset) for i in range(args.segments)
    ]
    stations = [window_stations(s.length_m) for s in segments]
    windows = int(sum(len(s) for s in stations))
    rasterize_windows(segments[0], stations[0])  # warm-up
    wall, cpu = [], []
    for _ in range(args.rounds):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        for segment, centres in zip(segments, stations, strict=True):
            rasterize_windows(segment, centres)
        wall.append(windows / (time.perf_counter() - wall_start))
        cpu.append(windows / max(time.process_time() - cpu_start, 1e-9))
    return {
        "preset": args.preset,
        "segments": args.segments,
        "drives_per_segment": float(np.mean([len(s.drives) for s in segments])),
        "windows_per_round": windows,
        "rounds": args.rounds,
        "windows_per_s": statistics.median(wall),
        "windows_per_s_rounds": [round(w, 1) for w in wall],
        "cpu_windows_per_s": statistics.median(cpu),
        "target_windows_per_s": TARGET_WINDOWS_PER_S,
        "meets_target": statistics.median(wall) >= TARGET_WINDOWS_PER_S,
        "channels": list(CHANNELS),
        "numpy": np.__version__,
    }


def bench_generation(args: argparse.Namespace) -> dict[str, Any]:
    from roadchange.generate import generate_dataset

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        paths = generate_dataset(
            Path(folder), preset=args.preset, segments=args.generate_segments, seed=args.seed
        )
        elapsed_s = time.perf_counter() - start
        bytes_ = sum(p.stat().st_size for p in paths)
    return {
        "segments": args.generate_segments,
        "segments_per_s": args.generate_segments / elapsed_s,
        "seconds_per_1000_segments": 1000 * elapsed_s / args.generate_segments,
        "mean_file_bytes": bytes_ / args.generate_segments,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for variable in THREAD_VARIABLES:
        os.environ[variable] = "1"
    result: dict[str, Any] = {
        "benchmark": "raster",
        "threads": 1,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "raster": bench_raster(args),
    }
    if args.generate_segments:
        result["generation"] = bench_generation(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
