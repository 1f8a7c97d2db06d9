"""The main job, end to end on one node with the embedded defaults (`fleetinfer demo`).

1. generate N roadchange segments (default 200) into a work folder;
2. enqueue one `check_segment` task per segment on the embedded SQLite queue;
3. run one fleetinfer node on them until the queue is empty, sampling the PSS of its processes;
4. summarise: tasks/min, model calls/s, PSS per process, and change-detection quality against the
   ground truth stored in each segment file.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetinfer.bench.measure import PssSampler
from fleetinfer.node.agent import NodeConfig, NodeReport, run_node
from fleetinfer.queue import open_broker
from fleetinfer.results import open_store
from fleetinfer.results.base import ResultStore, TaskStatus
from fleetinfer.task import send_tasks
from roadchange.evaluate import EvalReport, Outcome, SegmentFailure, compute_report
from roadchange.generate import generate_dataset
from roadchange.pipeline import shipped_model_repository
from roadchange.segfile import read_segment
from roadchange.tasks import check_segment, decision_from_json

DEMO_SEED = 20261123  # outside the training and validation seed ranges of roadchange.train


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoConfig:
    workdir: Path = Path(".fleetinfer/demo")
    segments: int = 200
    seed: int = DEMO_SEED
    preset: str = "default"
    workers: int | None = None
    client_mode: str = "shared"


@dataclass(frozen=True, slots=True)
class DemoSummary:
    tasks: int
    succeeded: int
    wall_s: float
    tasks_per_min: float
    model_calls: int
    model_calls_per_s: float
    pss_mib: dict[str, float]
    quality: EvalReport
    node: NodeReport

    def to_json(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "succeeded": self.succeeded,
            "wall_s": round(self.wall_s, 3),
            "tasks_per_min": round(self.tasks_per_min, 2),
            "model_calls": self.model_calls,
            "model_calls_per_s": round(self.model_calls_per_s, 2),
            "pss_mib": self.pss_mib,
            "workers": self.node.plan.workers,
            "quality": self.quality.to_json(),
        }


def prepare(config: DemoConfig, on_progress: Callable[[int], None] | None = None) -> list[Path]:
    """Generate the segments (deterministic: a rerun rewrites the same files)."""
    return generate_dataset(
        config.workdir / "segments",
        preset=config.preset,
        segments=config.segments,
        seed=config.seed,
        on_progress=on_progress,
    )


def queue_url(config: DemoConfig) -> str:
    return f"sqlite:///{config.workdir / 'queue.db'}"


def results_url(config: DemoConfig) -> str:
    return f"sqlite:///{config.workdir / 'results.db'}"


def enqueue(config: DemoConfig, paths: list[Path]) -> dict[str, Path]:
    """One task per segment on a purged queue; returns task id → segment file."""
    with open_broker(queue_url(config)) as broker, open_store(results_url(config)) as store:
        broker.purge()
        store.clear()
        payloads = [{"path": str(p.resolve())} for p in paths]
        ids = send_tasks(broker, check_segment.name, payloads)
    return dict(zip(ids, paths, strict=True))


def run(
    config: DemoConfig,
    tasks: dict[str, Path],
    on_progress: Callable[[int], None] | None = None,
) -> DemoSummary:
    """Run one node until the queue is empty and summarise it."""
    node_config = NodeConfig(
        target="roadchange.tasks:check_segment",
        queue_url=queue_url(config),
        results_url=results_url(config),
        models=shipped_model_repository(),
        client_mode=config.client_mode,
        workers=config.workers,
        exit_when_empty=True,
        metrics_port=None,
    )
    with open_store(results_url(config)) as store, PssSampler() as sampler:
        progress = _ProgressPoller(store, on_progress)
        started = time.perf_counter()
        with progress:
            report = run_node(node_config)
        wall_s = time.perf_counter() - started
        return _summarise(store, tasks, report, wall_s, sampler.summary_mib())


class _ProgressPoller:
    def __init__(self, store: ResultStore, on_progress: Callable[[int], None] | None) -> None:
        self.store, self.on_progress = store, on_progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-progress", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            if self.on_progress is not None:
                self.on_progress(self.store.count())

    def __enter__(self) -> _ProgressPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _summarise(
    store: ResultStore,
    tasks: dict[str, Path],
    report: NodeReport,
    wall_s: float,
    pss_mib: dict[str, float],
) -> DemoSummary:
    outcomes: list[Outcome] = []
    failures: list[SegmentFailure] = []
    for task_id, path in tasks.items():
        result = store.get(task_id)
        if result is None or result.status is not TaskStatus.SUCCEEDED:
            failures.append(SegmentFailure(str(path), _why(result)))
            continue
        outcomes.append(Outcome(read_segment(path).label, decision_from_json(result.value)))
    calls = sum(o.decision.model_calls for o in outcomes)
    quality = compute_report(outcomes, failures, wall_s)
    return DemoSummary(
        tasks=len(tasks),
        succeeded=len(outcomes),
        wall_s=wall_s,
        tasks_per_min=len(outcomes) * 60.0 / wall_s,
        model_calls=calls,
        model_calls_per_s=calls / wall_s,
        pss_mib=pss_mib,
        quality=quality,
        node=report,
    )


def _why(result: Any) -> str:
    if result is None:
        return "no result stored"
    return f"{result.status}: {result.error}"
