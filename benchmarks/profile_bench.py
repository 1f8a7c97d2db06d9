"""Does `fleetinfer profile` pick settings at least as fast as ONNX Runtime's defaults?

    .venv/bin/python benchmarks/profile_bench.py [--model-dir roadchange/src/roadchange/models/cdnet]
        [--batch-sizes 1,4,8] [--threads 0,1,2] [--rounds 7] [--seconds 1.0] [--out profile_bench.json]

Runs `profile_model` on a scratch copy of the model folder, then re-measures the picked
configuration against the default one (served version, intra-op threads 0 = runtime default,
batch 1, one instance) in fresh sessions, interleaved A B A B over `--rounds` rounds, and reports the
median samples/s of both and their ratio (the bar: >= 1.0). Prints JSON and writes it to --out.
`--untrained` exports an untrained CDNet (torch) instead of reading --model-dir.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from fleetinfer.compile.calibration import RandomSource, collect
from fleetinfer.compile.measure import interleaved, open_session, timed_round, warm_up
from fleetinfer.compile.profile import ProfileRow, ProfileSpace, profile_model
from fleetinfer.compile.targets import host_description
from fleetinfer.server.repository import ModelRepository


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir", type=Path, default=Path("roadchange/src/roadchange/models/cdnet")
    )
    parser.add_argument("--untrained", action="store_true")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--threads", default="0,1,2")
    parser.add_argument("--profile-rounds", type=int, default=3)
    parser.add_argument("--profile-seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument(
        "--int8", action="store_true", help="compile an INT8 version first (a precision to sweep)"
    )
    parser.add_argument("--out", type=Path, default=Path("profile_bench.json"))
    return parser.parse_args(argv)


def scratch_repository(args: argparse.Namespace, root: Path) -> Path:
    if args.untrained:
        sys.path.insert(0, str(Path(__file__).parent))
        from compile_bench import untrained_model_dir

        return untrained_model_dir(root).parent
    if not (args.model_dir / "config.toml").is_file():
        sys.exit(f"no model folder at {args.model_dir}: pass --model-dir REPO/MODEL or --untrained")
    shutil.copytree(args.model_dir, root / args.model_dir.name)
    return root


def remeasure(
    repo: Path, model: str, rows: dict[str, ProfileRow], args: argparse.Namespace
) -> dict[str, Any]:
    config = ModelRepository(repo).config(model)
    runs = {}
    for name, row in rows.items():
        session = open_session(
            repo / model / str(row.version) / "model.onnx", intra_op_threads=row.intra_op_threads
        )
        inputs = collect(
            RandomSource(config, count=1, batch=row.batch_size), config, what="timing"
        )[0]
        sessions = [session] + [
            open_session(
                repo / model / str(row.version) / "model.onnx",
                intra_op_threads=row.intra_op_threads,
            )
            for _ in range(row.instances - 1)
        ]
        warm_up(sessions, inputs, calls=5)
        runs[name] = functools.partial(timed_round, sessions, inputs, args.seconds)
    timings = interleaved(runs, rounds=args.rounds)
    return {name: round(t.samples_per_s, 2) for name, t in timings.items()}


def compile_int8(repo: Path, model: str) -> None:
    """An INT8 version beside the FP32 one (gated on 50 segments; not published)."""
    from fleetinfer.compile.compiler import CompileRequest, compile_model
    from roadchange.compile_plugin import RoadchangeCalibration, RoadchangeEvaluator

    request = CompileRequest(repository=repo, model=model, precision="int8", measure=False)
    compile_model(
        request, calibration=RoadchangeCalibration(), evaluator=RoadchangeEvaluator(segments=50)
    )


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    repo = scratch_repository(args, root)
    model = ModelRepository(repo).models()[0]
    if args.int8:
        compile_int8(repo, model)
    space = ProfileSpace(
        batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
        intra_op_threads=tuple(int(t) for t in args.threads.split(",")),
        rounds=args.profile_rounds,
        duration_s=args.profile_seconds,
        measure_memory=False,
    )
    report = profile_model(
        repo, model, space, on_step=lambda s: print(f"profile: {s}", file=sys.stderr)
    )
    measured = remeasure(repo, model, {"picked": report.best, "default": report.default}, args)
    return {
        "benchmark": "profile_bench",
        "host": host_description(),
        "model": "untrained cdnet" if args.untrained else str(args.model_dir),
        "picked": {
            k: getattr(report.best, k)
            for k in ("version", "precision", "batch_size", "intra_op_threads", "instances")
        },
        "default": {
            k: getattr(report.default, k)
            for k in ("version", "precision", "batch_size", "intra_op_threads", "instances")
        },
        "picked_samples_per_s": measured["picked"],
        "default_samples_per_s": measured["default"],
        "ratio": round(measured["picked"] / measured["default"], 3),
        "bar_met": measured["picked"] >= measured["default"],
        "rounds": args.rounds,
        "profile": report.to_json(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="profile-bench-") as tmp:
        report = run(args, Path(tmp))
    text = json.dumps(report, indent=2)
    args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
