"""Fault drill: 1,000-task node runs under the faults of issue 19; prints JSON.

    python benchmarks/fault_drill.py [--tasks 1000] [--queue sqlite|redis] [--freeze-s 45]

Each drain run: a node (`--client shared`, 4 workers, the `affine` model) runs 1,000 model
tasks of 20 ms, one in 250 of them long (8 s; `--long-every 0`: none, every drain clean); once 300 are done, a signal goes to the agent
alone, to every process (SIGTERM) or to every process (SIGINT, as Ctrl-C), with and without
preload. The grace is 3 s: tasks that fit finish, the long ones in flight are released. The run
records the exit code (0 only for a clean drain), the drain time, what the queue holds after the
exit (nothing in flight: nothing waits for a visibility timeout), then a second node finishes
the queue and the results are checked: every task once, the nodes' success counts equal the
store's.

The freeze run: the model server is SIGSTOPped for `--freeze-s` seconds (45) with a model
deadline of 5 s and the default probes (every 2 s, 5 s each, 3 in a row): when tasks complete
again, and when the agent restarted the server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.apps.harness import NodeProcess, wait_for  # noqa: E402
from tests.faults.node import freeze, node_pids, signal_node  # noqa: E402
from tests.helpers.tiny_models import affine_repository  # noqa: E402

from fleetinfer.queue import open_broker  # noqa: E402
from fleetinfer.results import TaskStatus, open_store  # noqa: E402
from fleetinfer.task import send_tasks  # noqa: E402

APP = "tests.faults.app:app"
DELIVERIES = ("agent", "every-term", "every-int")
STARTS = ("--preload", "--no-preload")
VISIBILITY_S = 60  # a message left in flight by a drain costs the finishing node this long
GRACE_S = 3.0
DEADLINE_S = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--queue", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--freeze-s", type=float, default=45.0)
    parser.add_argument("--skip-drains", action="store_true")
    parser.add_argument(
        "--long-every", type=int, default=250, help="one task in N is long (8 s); 0: none"
    )
    parser.add_argument("--only", default="", help="one run, e.g. every-term:--no-preload")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fi-drill-"))
    models = affine_repository(work / "repo")
    report: dict[str, Any] = {
        "tasks": args.tasks,
        "queue": args.queue,
        "long_every": args.long_every,
        "drains": [],
    }
    if not args.skip_drains:
        for start in STARTS:
            for delivery in DELIVERIES:
                if args.only and args.only != f"{delivery}:{start}":
                    continue
                run = work / f"{delivery}{start}"
                run.mkdir()
                result = drain_run(args, run, models, delivery, start)
                report["drains"].append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
    if args.freeze_s > 0:
        run = work / "freeze"
        run.mkdir()
        report["freeze"] = freeze_run(args, run, models)
    print(json.dumps(report, indent=2))


def urls(args: argparse.Namespace, run: Path) -> tuple[str, str]:
    results = f"sqlite:///{run}/results.db"
    if args.queue == "sqlite":
        return f"sqlite:///{run}/queue.db?visibility_timeout_s={VISIBILITY_S}", results
    name = f"drill{os.getpid()}{run.name.replace('-', '')}"
    return f"{args.redis_url}?queue={name}&visibility_timeout_s={VISIBILITY_S}", results


def node_options(models: Path, *more: str) -> tuple[str, ...]:
    return ("--workers", "4", "--client", "shared", "--models", str(models), *more)


def drain_run(
    args: argparse.Namespace, run: Path, models: Path, delivery: str, start: str
) -> dict[str, Any]:
    queue_url, results_url = urls(args, run)
    with open_broker(queue_url) as broker, open_store(results_url) as store:
        every = args.long_every
        payloads = [
            {"x": float(i), "s": 8.0 if every and i % every == every // 2 else 0.02}
            for i in range(args.tasks)
        ]
        send_tasks(broker, "model_nap", payloads)
        node = NodeProcess(APP, queue_url, results_url,
                           *node_options(models, "--grace-s", str(GRACE_S), start),
                           log_path=run / "node.log")  # fmt: skip
        try:
            wait_for(lambda: store.count() >= min(300, args.tasks // 3), 600, "300 tasks done")
            in_flight_at_signal = broker.stats().in_flight
            processes = len(node_pids(node))
            sent_at = time.monotonic()
            signal_node(node, delivery)
            code = node.wait(GRACE_S + 120)
            exit_s = time.monotonic() - sent_at
        finally:
            node.close()
        after = broker.stats()
        stopped = node.event("stopped")
        rest = finish(queue_url, results_url, models, run)
        statuses = {s: store.count(s) for s in (TaskStatus.SUCCEEDED, TaskStatus.DEAD)}
        results = {r.task_id for r in store.iter_results()}
        if args.queue == "redis":
            broker.purge()
    counted = stopped["outcomes"]["succeeded"] + rest["outcomes"]["succeeded"]
    return {
        "delivery": delivery,
        "start": start.removeprefix("--"),
        "processes_signalled": processes if delivery != "agent" else 1,
        "in_flight_at_signal": in_flight_at_signal,
        "exit_code": code,
        "exit_s": round(exit_s, 2),
        "drain_s": stopped["drain_s"],
        "clean": stopped["clean"],
        "released_unfinished": stopped["outcomes"]["abandoned"],
        "exit_code_0_iff_clean": (code == 0) == (stopped["outcomes"]["abandoned"] == 0),
        "in_flight_after_exit": after.in_flight,
        "visible_after_exit": after.visible,
        "finished_by_second_node": rest["outcomes"]["succeeded"],
        "second_node_duplicates": rest["outcomes"]["duplicate"],
        "results": len(results),
        "succeeded": statuses[TaskStatus.SUCCEEDED],
        "dead": statuses[TaskStatus.DEAD],
        "node_counts_equal_store": counted == statuses[TaskStatus.SUCCEEDED],
    }


def finish(queue_url: str, results_url: str, models: Path, run: Path) -> dict[str, Any]:
    """A second node runs what is left and exits when the queue is empty."""
    node = NodeProcess(APP, queue_url, results_url, *node_options(models, "--exit-when-empty"),
                       log_path=run / "finish.log")  # fmt: skip
    try:
        code = node.wait(900)
    finally:
        node.close()
    stopped = node.event("stopped")
    stopped["exit_code"] = code
    return stopped


def freeze_run(args: argparse.Namespace, run: Path, models: Path) -> dict[str, Any]:
    queue_url, results_url = urls(args, run)
    with open_broker(queue_url) as broker, open_store(results_url) as store:
        send_tasks(broker, "model_nap", [{"x": float(i), "s": 0.02} for i in range(args.tasks)])
        node = NodeProcess(APP, queue_url, results_url,
                           *node_options(models, "--model-deadline-s", str(DEADLINE_S)),
                           log_path=run / "node.log")  # fmt: skip
        try:
            wait_for(lambda: store.count() >= 200, 600, "200 tasks done")
            server = int(node.health()["model_server_pid"])
            freeze(server)
            frozen_at = time.monotonic()
            count_at_freeze = store.count()
            timeline = watch(node, store, frozen_at, args.freeze_s)
            failed_at_deadline = timeline["failed_by_deadline"]
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGCONT)
            wait_for(lambda: store.count() >= args.tasks, 900, "every task done")
            node.terminate()
            code = node.wait(60)
        finally:
            node.close()
        log = (run / "node.log").read_text(errors="replace")
        stopped = node.event("stopped")
        result = {
            "freeze_s": args.freeze_s,
            "deadline_s": DEADLINE_S,
            "completed_at_freeze": count_at_freeze,
            "resumed_after_s": timeline["resumed_after_s"],
            "tasks_done_during_freeze": timeline["done_during_freeze"],
            "failed_outcomes_by_deadline_plus_1s": failed_at_deadline,
            "server_restarts": log.count("probes in a row"),
            "calls_past_deadline_logged": log.count("ModelDeadlineError"),
            "old_server_killed": not os.path.exists(f"/proc/{server}"),
            "results": store.count(),
            "dead": store.count(TaskStatus.DEAD),
            "node_succeeded": stopped["outcomes"]["succeeded"],
            "node_failed": stopped["outcomes"]["failed"],
            "exit_code": code,
        }
        if args.queue == "redis":
            broker.purge()
    return result


def watch(node: NodeProcess, store: Any, frozen_at: float, freeze_s: float) -> dict[str, Any]:
    """Poll the store during the freeze: when tasks complete again after the deadline."""
    start_count = store.count()
    resumed_after_s = None
    failed_by_deadline = None
    while time.monotonic() - frozen_at < freeze_s:
        count = store.count()
        elapsed = time.monotonic() - frozen_at
        if failed_by_deadline is None and elapsed > DEADLINE_S + 1.0:
            failed_by_deadline = failed_count(node)
        # tasks past their model call at the freeze finish at once; later ones need a server
        if resumed_after_s is None and elapsed > DEADLINE_S and count > start_count + 8:
            resumed_after_s = round(elapsed, 2)
        time.sleep(0.2)
    return {
        "resumed_after_s": resumed_after_s,
        "done_during_freeze": store.count() - start_count,
        "failed_by_deadline": failed_by_deadline,
    }


def failed_count(node: NodeProcess) -> float:
    """Tasks released as failed so far (a model call past its deadline is one)."""
    for line in node.metrics().splitlines():
        if line.startswith('fleetinfer_tasks_total{outcome="failed"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


if __name__ == "__main__":
    main()
