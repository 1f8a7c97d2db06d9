"""Several `fleetinfer run` nodes on this machine, each standing in for a machine of the fleet.

Each node is its own process group (SIGKILLed whole, as a machine vanishes), has its own socket
folder (its own TMPDIR, where the node makes its model server's socket folder) and, where
`unshare --ipc --mount` can run (root, or a user namespace), its own IPC namespace and its own
/dev/shm: a private tmpfs in its own mount namespace, gone with the node. Without `unshare` the
nodes share /dev/shm; their segment names carry their worker pids, so they still never collide.

`LocalFleet` starts and stops such nodes (the `Fleet` the backlog autoscaler resizes), and
`SpotMetadataStub` is an instance-metadata service that starts serving a spot notice on demand.
The drills (`kill_and_spot_drill`, `autoscaled_drill`) are shared by the test and
benchmarks/fleet_drill.py.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from fleetinfer.plan.autoscale import BacklogAutoscaler, ScaleDecision
from fleetinfer.plan.policy import BacklogPolicy
from fleetinfer.queue import open_broker
from fleetinfer.results import TaskResult, TaskStatus, open_store
from fleetinfer.server.shm import our_segments
from fleetinfer.task import send_tasks
from tests.apps.harness import REPO_ROOT, NodeProcess, _env, wait_for
from tests.helpers.tiny_models import affine_repository

PRIVATE_SHM = 'mount -t tmpfs -o size=256m,mode=1777 fleetinfer-shm /dev/shm && exec "$@"'


@functools.cache
def shm_namespaces_work() -> bool:
    """Whether this machine lets a node have its own IPC namespace and /dev/shm."""
    try:
        done = subprocess.run(
            ["unshare", "--ipc", "--mount", "sh", "-c", PRIVATE_SHM, "probe", "true"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class FleetNode(NodeProcess):
    """One node as a machine: own process group, TMPDIR and (where possible) /dev/shm."""

    def __init__(
        self,
        name: str,
        node_args: Sequence[str],
        root: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        folder = root / name
        folder.mkdir(parents=True)
        # short: the socket path inside must stay under AF_UNIX's 108 bytes, wherever root is
        self.tmp = Path(tempfile.mkdtemp(prefix=f"fi-{name}-"))
        command = [sys.executable, "-m", "fleetinfer", "run", *node_args]
        command += ["--json", "--metrics-port", "0"]
        if shm_namespaces_work():
            command = ["unshare", "--ipc", "--mount", "sh", "-c", PRIVATE_SHM, name, *command]
        self.started_path = folder / "started.log"  # task ids, as each task starts
        env = _env() | {"TMPDIR": str(self.tmp), "FLEETINFER_DRILL_STARTED": str(self.started_path)}
        env |= extra_env or {}
        self.name, self.log_path = name, folder / "node.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=self._log, env=env,
            start_new_session=True,
        )  # fmt: skip
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def vanish(self) -> float:
        """SIGKILL the node's whole process group, as when its machine disappears; the time."""
        killed_at = time.time()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return killed_at

    def started_list(self) -> list[str]:
        """Each start of a task by this node's workers (`tests.apps.jobs.affine` notes it)."""
        if not self.started_path.exists():
            return []
        return self.started_path.read_text(encoding="utf-8").split()

    def started_tasks(self) -> set[str]:
        return set(self.started_list())

    def shm_segments(self) -> list[str]:
        """The fleetinfer segments in the node's own view of /dev/shm."""
        shm = Path(f"/proc/{self.proc.pid}/root/dev/shm")
        return sorted(p.name for p in shm.iterdir() if p.name.startswith("fleetinfer-"))

    def task_records(self) -> list[dict[str, Any]]:
        """The node's log records of settled tasks (`--verbose --log-format json`)."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        return [r for r in records if "task_id" in r and "outcome" in r]

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        super().close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class LocalFleet:
    """Nodes as local processes; `scale_to` starts new ones or drains the newest (SIGTERM)."""

    def __init__(self, node_args: Callable[[str], Sequence[str]], root: Path) -> None:
        self._node_args, self._root = node_args, root
        self.running: list[FleetNode] = []
        self.stopped: list[FleetNode] = []
        self._started = 0

    def start(self, *extra: str, env: dict[str, str] | None = None) -> FleetNode:
        self._started += 1
        name = f"node{self._started}"
        node = FleetNode(name, [*self._node_args(name), *extra], self._root, env)
        self.running.append(node)
        return node

    def drain(self, node: FleetNode) -> None:
        node.terminate()
        self.running.remove(node)
        self.stopped.append(node)

    def vanish(self, node: FleetNode) -> float:
        self.running.remove(node)
        self.stopped.append(node)
        return node.vanish()

    def size(self) -> int:
        return len(self.running)

    def check_alive(self) -> None:
        """AssertionError with the logs when a node that should run has exited."""
        dead = [n for n in self.running if n.proc.poll() is not None]
        if dead:
            raise AssertionError(f"nodes exited: {[n.name for n in dead]}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}:\n{n.log()[-1500:]}" for n in self.running + self.stopped)

    def scale_to(self, nodes: int) -> None:
        while len(self.running) < nodes:
            self.start()
        while len(self.running) > nodes:
            self.drain(self.running[-1])

    def close(self) -> None:
        for node in self.running + self.stopped:
            node.close()


class SpotMetadataStub:
    """IMDSv2 on 127.0.0.1: a token on PUT; the spot notice path 404s until `notice()`."""

    NOTICE: ClassVar[dict[str, str]] = {"action": "terminate", "time": "2026-12-07T17:00:00Z"}

    def __init__(self) -> None:
        self.noticed = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def notice(self) -> None:
        self.noticed.set()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                self._reply(200, b"token")

            def do_GET(self) -> None:
                if self.path.endswith("/spot/instance-action") and stub.noticed.is_set():
                    self._reply(200, json.dumps(stub.NOTICE).encode())
                else:
                    self._reply(404, b"not found")

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


TASKS = 3000
WORKERS = 2
GRACE_S = 5
DOOMED_TASK_S = 0.1  # how long each task of the node that vanishes takes
DOOMED_RUNS_FIRST = 5  # tasks it has finished when it vanishes (it holds others then)


def node_args(queue_url: str, results_url: str, models: Path, *extra: str) -> list[str]:
    """A model-calling node: the `affine` task through a shared model server."""
    return [
        "tests.apps.jobs:app", "--queue", queue_url, "--results", results_url,
        "--models", str(models), "--client", "shared", "--workers", str(WORKERS),
        "--grace-s", str(GRACE_S), "--verbose", "--log-format", "json", *extra,
    ]  # fmt: skip


def send_affine_tasks(queue_url: str, count: int) -> list[str]:
    with open_broker(queue_url) as broker:
        return send_tasks(
            broker, "affine", [{"x": [float(i), 1.0, -1.0, 0.5]} for i in range(count)]
        )


def check_results(results_url: str, task_ids: list[str], queue_url: str) -> dict[str, Any]:
    """Count what a drill must show: one succeeded, correct result per task, none lost."""
    with open_store(results_url) as store, open_broker(queue_url) as broker:
        results = list(store.iter_results())
        dead = broker.dead_letters()
    by_id = {r.task_id: r for r in results}
    return {
        "tasks": len(task_ids),
        "results": len(results),
        "succeeded": sum(r.status is TaskStatus.SUCCEEDED for r in results),
        "correct": sum(_correct(by_id.get(t)) for t in task_ids),
        "duplicates": len(results) - len(by_id),
        "lost": sum(t not in by_id for t in task_ids),
        "dead_letters": len(dead),
        "received_more_than_once": sum(r.attempts > 1 for r in results),
    }


def _correct(result: TaskResult | None) -> bool:
    if result is None or result.status is not TaskStatus.SUCCEEDED:
        return False
    x = result.payload["x"]  # type: ignore[index]
    return bool(result.value == {"y": [3.0 * v + 1.0 for v in x]})


def rerun_after_kill_s(
    results_url: str, killed: FleetNode, others: Sequence[FleetNode], killed_at: float
) -> tuple[int, float]:
    """The killed node's tasks received again after the kill, and the seconds from the kill
    until the last of them started again. Its tasks come back after the visibility timeout in
    three states: received and not yet started (they start once, elsewhere, as a later
    delivery), started (they start again), or run to a stored result and not yet acked (the
    node that receives them acks them as a `duplicate`; its log record's time is when). What
    else a slow broker delivers twice (a visibility timeout that passed before an ack) started
    first on a surviving node, and is not the kill's."""
    started_there = killed.started_tasks()
    starts = Counter(t for node in (killed, *others) for t in node.started_list())
    with open_store(results_url) as store:
        again = {
            r.task_id: r.started_at
            for r in store.iter_results()
            if r.attempts > 1 and r.started_at >= killed_at
            and (r.task_id in started_there or starts[r.task_id] == 1)
        }  # fmt: skip
    for node in others:
        for record in node.task_records():
            if (record["outcome"] == "duplicate" and record["time"] >= killed_at
                    and record["task_id"] in started_there):  # fmt: skip
                again.setdefault(record["task_id"], record["time"])
    return len(again), max((at - killed_at for at in again.values()), default=float("nan"))


def acked_as_duplicate(fleet: LocalFleet) -> dict[str, int]:
    """Deliveries of a task that already had its result: acked without running it again."""
    records = [r for n in fleet.running + fleet.stopped for r in n.task_records()]
    return {"acked_as_duplicate": sum(r["outcome"] == "duplicate" for r in records)}


def wait_until_done(queue_url: str, results_url: str, count: int, timeout_s: float) -> None:
    with open_store(results_url) as store, open_broker(queue_url) as broker:
        wait_for(lambda: store.count() >= count, timeout_s, f"{count} results", pause_s=0.2)
        wait_for(lambda: broker.stats().pending == 0, 30, "the last acks", pause_s=0.2)


def kill_and_spot_drill(
    queue_url: str, results_url: str, root: Path, *, tasks: int = TASKS
) -> dict[str, Any]:
    """Three nodes on one queue: node1 vanishes at a fifth of the tasks (node4 replaces it),
    node2 gets a spot notice at two fifths and drains; the rest run to the end."""
    models = affine_repository(root / "models", versions={1: 3.0})
    task_ids = send_affine_tasks(queue_url, tasks)
    spot = SpotMetadataStub()
    spot_args = ("--spot-endpoint", spot.endpoint, "--spot-interval-s", "0.2")
    fleet = LocalFleet(lambda name: node_args(queue_url, results_url, models), root)
    started_s = time.monotonic()
    try:
        # the doomed node's tasks nap, so that the kill finds it holding tasks (fast tasks leave
        # a node between messages now and then: nothing would come back to count)
        doomed = fleet.start(env={"FLEETINFER_DRILL_TASK_S": str(DOOMED_TASK_S)})
        spotted, survivor = fleet.start(*spot_args), fleet.start()
        nodes = (doomed, spotted, survivor)
        report = _kill_then_spot(queue_url, results_url, tasks, fleet, nodes, spot)
        wait_until_done(queue_url, results_url, tasks, 120)
        report["run_s"] = round(time.monotonic() - started_s, 1)
        report["exit_codes"] = _drain_all(fleet)
    finally:
        fleet.close()
        spot.close()
    return check_results(results_url, task_ids, queue_url) | acked_as_duplicate(fleet) | report


def _kill_then_spot(
    queue_url: str,
    results_url: str,
    tasks: int,
    fleet: LocalFleet,
    nodes: tuple[FleetNode, FleetNode, FleetNode],
    spot: SpotMetadataStub,
) -> dict[str, Any]:
    doomed, spotted, _ = nodes
    with open_store(results_url) as store:
        _wait(fleet, lambda: store.count() >= tasks // 5, "a fifth of the tasks")
        # busy, not a share of the queue: on a fast host the other two drain it before node1,
        # whose tasks nap, would have run a thirtieth of it
        _wait(fleet, lambda: _succeeded(doomed) >= DOOMED_RUNS_FIRST, "node1 to run tasks")
        segments = {n.name: n.shm_segments() for n in nodes if shm_namespaces_work()}
        mine = {name for names in segments.values() for name in names}
        on_host = sorted(mine.intersection(our_segments()))
        with open_broker(queue_url) as broker:
            in_flight_at_kill = broker.stats().in_flight
        _wait(fleet, lambda: _holds_a_task(doomed), "node1 to hold a task it started")
        killed_at = fleet.vanish(doomed)
        fleet.start()  # the replacement
        _wait(fleet, lambda: store.count() >= 2 * tasks // 5, "two fifths of the tasks")
    noticed_at = time.monotonic()
    spot.notice()
    fleet.running.remove(spotted)
    fleet.stopped.append(spotted)
    spot_exit = spotted.wait(GRACE_S + 30)
    drain_s = time.monotonic() - noticed_at
    wait_until_done(queue_url, results_url, tasks, 120)
    others = [n for n in fleet.running + fleet.stopped if n is not doomed]
    rerun, rerun_s = rerun_after_kill_s(results_url, doomed, others, killed_at)
    return {
        "in_flight_at_kill_all_nodes": in_flight_at_kill,
        "killed_node_tasks_run_again": rerun,
        "rerun_after_kill_s": round(rerun_s, 2),
        "spot_drain_s": round(drain_s, 2),
        "spot_exit_code": spot_exit,
        "spot_reason": spotted.event("stopped", 5)["reason"],
        "shm_segments_per_node": segments,
        "node_segments_in_host_shm": on_host,
    }


def _wait(fleet: LocalFleet, condition: Callable[[], bool], what: str) -> None:
    """`wait_for` that fails at once when a node dies, and shows the logs when it times out."""

    def done() -> bool:
        fleet.check_alive()
        return condition()

    try:
        wait_for(done, 120, what, pause_s=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{fleet.logs()}") from None


def _holds_a_task(node: FleetNode) -> bool:
    """A task the node started has not settled (no log record yet): it naps, so the kill finds
    it still running (a node waiting on a slow broker holds none of its own now and then)."""
    settled = {record["task_id"] for record in node.task_records()}
    return any(task_id not in settled for task_id in node.started_list())


def _succeeded(node: FleetNode) -> int:
    return int(node.health()["outcomes"].get("succeeded", 0))


def _drain_all(fleet: LocalFleet) -> dict[str, int]:
    for node in list(fleet.running):
        fleet.drain(node)
    return {n.name: n.wait(GRACE_S + 30) for n in fleet.stopped}


def autoscaled_drill(
    queue_url: str,
    results_url: str,
    root: Path,
    *,
    policy: BacklogPolicy,
    every_s: float = 1.0,
    tasks: int = TASKS,
) -> tuple[dict[str, Any], list[ScaleDecision]]:
    """The backlog policy decides every `every_s` from the queue's real depth how many nodes run;
    the fleet follows, from none until the queue is empty and the policy is back at its floor."""
    models = affine_repository(root / "models", versions={1: 3.0})
    task_ids = send_affine_tasks(queue_url, tasks)
    fleet = LocalFleet(lambda name: node_args(queue_url, results_url, models), root)
    followed: list[tuple[int, int]] = []
    try:
        with open_broker(queue_url) as broker, open_store(results_url) as store:
            scaler = BacklogAutoscaler(policy, broker, fleet)
            deadline = time.monotonic() + 180
            while not (store.count() >= tasks and fleet.size() == policy.floor_nodes):
                assert time.monotonic() < deadline, f"not done after 180 s: {broker.stats()}"
                fleet.check_alive()
                time.sleep(every_s)
                decision = scaler.step()
                alive = sum(node.proc.poll() is None for node in fleet.running)
                followed.append((decision.desired, alive))
        wait_until_done(queue_url, results_url, tasks, 60)
        exit_codes = _drain_all(fleet)
    finally:
        fleet.close()
    report = check_results(results_url, task_ids, queue_url) | acked_as_duplicate(fleet)
    report |= {"followed": followed, "exit_codes": exit_codes, "nodes_started": len(fleet.stopped)}
    return report, scaler.decisions
