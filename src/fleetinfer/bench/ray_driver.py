"""The `ray` mode's driver: the same task code, its models held by a Ray actor, run as Ray tasks.

    RAY_AUTH_MODE=token python -m fleetinfer.bench.ray_driver SPEC.json

What a user who picked Ray would build: one actor on the node holds the models (an in-process
ONNX Runtime client, `executions` calls at once: a threaded actor, each call single-threaded, as
the shared server's instances), and each payload runs as a Ray task, `workers` at a time (each
asks for `cores ÷ workers` CPUs), whose `ctx.model(name)` handle calls the actor (inputs travel
through Ray's object store; `ray.get` waits for the answer). The task is the benchmark probe's
(`probe.counting`): model calls counted and timed as in every other mode.

This process starts a local Ray instance of its own (`ray.init`, a fresh GCS on a free port, not
Redis's 6379; `RAY_AUTH_MODE=token` where the host requires it), loads the models in the actor,
then prints one JSON line `{"ready_at": …}` and runs the payloads; then one JSON line:
`ready_at`, `start_s` (Ray start + actor and model load), `tasks` (each: `started_at`,
`finished_at`, `model_calls`, `model_wall_s`, `task_cpu_s`, `error`). Ray still runs until a
line (or the end) comes on stdin, so that the runner can read the CPU of Ray's processes; then
it shuts Ray down and exits. The benchmark runner kills its process group if it overstays.

Spec (a JSON file, the one argument): `target`, `models`, `payloads`, `workers`, `cores`, `executions`,
`threads` (intra-op per execution), `temp_dir`, `cwd` (put first on the tasks' `sys.path`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

ACTOR_CPUS = 0.01  # the actor's claim: its calls run on the tasks' cores, as a server's would


class ModelActor:
    """Holds every model the tasks use: one in-process client, called from several threads."""

    def __init__(self, models: str, threads: int) -> None:
        from fleetinfer.client import InProcessModelClient

        self._client = InProcessModelClient(models, intra_op_threads=threads)

    def load(self, name: str) -> bool:
        self._client.session(name, None)
        return True

    def infer(
        self, name: str, inputs: Mapping[str, np.ndarray[Any, Any]], version: int | None
    ) -> dict[str, np.ndarray[Any, Any]]:
        return dict(self._client.model(name).infer(inputs, version=version))


ModelCall = Callable[[str, dict[str, Any], "int | None"], Any]


class RayModelHandle:
    """A task's `ctx.model(name)`: each `infer` one call of the models' holder, waited for."""

    def __init__(self, call: ModelCall, name: str) -> None:
        self._call, self._name = call, name

    def infer(self, inputs: Mapping[str, Any], *, version: int | None = None) -> Any:
        return self._call(self._name, dict(inputs), version)

    def empty(self, shape: tuple[int, ...], dtype: Any = "float32") -> np.ndarray[Any, Any]:
        return np.empty(shape, dtype)


def run_payload(target: str, cwd: str, actor: Any, payload: Any) -> dict[str, Any]:
    """One task, inside a Ray worker: its model calls go to `actor`."""
    import ray

    def call(name: str, inputs: dict[str, Any], version: int | None) -> Any:
        return ray.get(actor.infer.remote(name, inputs, version))

    return run_task(target, cwd, call, payload)


def run_task(target: str, cwd: str, call: ModelCall, payload: Any) -> dict[str, Any]:
    """The probe's counting task on `payload`, its models reached through `call`; its timing."""
    started_at = time.time()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    from fleetinfer.bench.probe import probe_app
    from fleetinfer.task import TaskContext

    task = next(iter(probe_app(target)))
    ctx = TaskContext(
        task_id=uuid.uuid4().hex,
        task_name=task.name,
        receive_count=1,
        logger=logging.getLogger(f"fleetinfer.task.{task.name}"),
        _heartbeat=lambda: None,
        _models=lambda name: RayModelHandle(call, name),
    )
    try:
        result = task(ctx, payload)
        error = None
    except Exception as exc:
        result, error = {}, f"{type(exc).__name__}: {exc}"
    return {
        "started_at": started_at,
        "finished_at": time.time(),
        "model_calls": int(result.get("model_calls", 0)),
        "model_wall_s": float(result.get("model_wall_s", 0.0)),
        "task_cpu_s": float(result.get("task_cpu_s", 0.0)),
        "error": error,
    }


def model_names(payloads: list[Any]) -> list[str]:
    """The models the payloads name (`"model"`), loaded in the actor before the clock starts."""
    names = {p.get("model") for p in payloads if isinstance(p, dict)}
    return sorted(n for n in names if isinstance(n, str))


def drive(spec: dict[str, Any]) -> dict[str, Any]:
    began = time.time()
    settings = {"num_cpus": spec["cores"], "_temp_dir": spec["temp_dir"]}  # a bad spec fails here
    import ray

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **settings)
    try:
        actor_class = ray.remote(ModelActor).options(
            num_cpus=ACTOR_CPUS, max_concurrency=spec["executions"]
        )
        actor: Any = actor_class.remote(spec["models"], spec["threads"])
        ray.get([actor.load.remote(name) for name in model_names(spec["payloads"])])
        remote = ray.remote(run_payload).options(num_cpus=spec["cores"] / spec["workers"])
        ready_at = time.time()
        print(json.dumps({"ready_at": ready_at}), flush=True)
        refs = [remote.remote(spec["target"], spec["cwd"], actor, p) for p in spec["payloads"]]
        tasks = ray.get(refs)
        report = {"ready_at": ready_at, "start_s": ready_at - began, "tasks": tasks}
        print(json.dumps(report), flush=True)
        sys.stdin.readline()  # the runner reads the tree's CPU, then says stop
    finally:
        ray.shutdown()
    return report


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as spec_file:
        spec = json.load(spec_file)
    try:
        drive(spec)
    except Exception as exc:
        traceback.print_exc()
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        sys.exit(1)
    sys.stdout.flush()
    os._exit(0)  # Ray's threads may linger after shutdown


if __name__ == "__main__":
    main()
