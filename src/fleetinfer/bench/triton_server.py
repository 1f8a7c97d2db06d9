"""Serve the models of a fleetinfer model repository through Triton, started by PyTriton.

This is the `triton` comparison point of the benchmarks: the same ONNX file, run by ONNX Runtime
with the same thread budget, behind a real tritonserver (HTTP and gRPC, dynamic batching).

It runs under the PyTriton venv (`scripts/triton-venv.sh`, Debian's /usr/bin/python3.11), so it is a
self-contained script: standard library, numpy, onnxruntime and pytriton only, no fleetinfer import.

    .venv-triton/bin/python src/fleetinfer/bench/triton_server.py --models REPO --model cdnet \
        --threads 2 --http-port 8000 --grpc-port 8001

`--model` may be given several times; without it every model of the repository is served (as
`fleetinfer serve` does). Each model gets `--instances` ONNX Runtime sessions (concurrent
executions) of `--threads` intra-op threads each.
It prints one JSON line `{"ready": true, "http_port": …, "grpc_port": …}` once the model is served,
then serves until SIGTERM / SIGINT. With `--ready-file PATH` that line goes to PATH instead (written
whole, then renamed into place): tritonserver logs to the same stdout, and a slow start has been
seen to split the line with a log line.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


def _latest_version(folder: Path) -> Path:
    versions = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    if not versions:
        raise SystemExit(f"triton_server: no version folder under {folder}")
    return folder / str(versions[-1]) / "model.onnx"


def _session(path: Path, threads: int) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _tensors(specs: list[dict[str, Any]]) -> list[Any]:
    from pytriton.model_config import Tensor

    # Triton's shapes exclude the batch dimension when batching is on.
    return [
        Tensor(name=s["name"], dtype=DTYPES[s["dtype"]], shape=tuple(s["shape"][1:]) or (1,))
        for s in specs
    ]


def _infer_function(config: dict[str, Any], path: Path, threads: int) -> Any:
    from pytriton.decorators import batch

    session = _session(path, threads)
    output_names = [s["name"] for s in config["outputs"]]
    scalar_outputs = {s["name"] for s in config["outputs"] if len(s["shape"]) == 1}

    @batch  # type: ignore[untyped-decorator,unused-ignore]
    def infer(**inputs: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
        outputs = session.run(output_names, inputs)
        return {
            name: (out.reshape(-1, 1) if name in scalar_outputs else out)
            for name, out in zip(output_names, outputs, strict=True)
        }

    return infer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--model", action="append", help="default: every model of --models")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per instance")
    parser.add_argument("--instances", type=int, default=1, help="sessions per model")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--max-queue-delay-us", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, help="write the ready line here, not stdout")
    args = parser.parse_args(argv)

    from pytriton.model_config import DynamicBatcher, ModelConfig
    from pytriton.triton import Triton, TritonConfig

    names = args.model or sorted(
        p.name for p in args.models.iterdir() if (p / "config.toml").is_file()
    )
    triton_config = TritonConfig(
        http_address="127.0.0.1",
        grpc_address="127.0.0.1",
        metrics_address="127.0.0.1",
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_verbose=0,
    )
    with Triton(config=triton_config) as triton:
        for name in names:
            config = tomllib.loads((args.models / name / "config.toml").read_text())
            triton.bind(
                model_name=name,
                infer_func=[
                    _infer_function(config, _latest_version(args.models / name), args.threads)
                    for _ in range(args.instances)
                ],
                inputs=_tensors(config["inputs"]),
                outputs=_tensors(config["outputs"]),
                config=ModelConfig(
                    max_batch_size=int(config["max_batch_size"]),
                    batcher=DynamicBatcher(  # the same batching as config.toml gives our server
                        max_queue_delay_microseconds=args.max_queue_delay_us,
                        preferred_batch_size=config.get("batching", {}).get("preferred_batch_sizes")
                        or None,
                    ),
                ),
                strict=False,
            )
        ready = json.dumps(
            {"ready": True, "http_port": args.http_port, "grpc_port": args.grpc_port}
        )
        if args.ready_file is None:
            print(ready, flush=True)
        else:
            partial = args.ready_file.with_name(args.ready_file.name + ".partial")
            partial.write_text(ready + "\n")
            partial.replace(args.ready_file)
        triton.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
