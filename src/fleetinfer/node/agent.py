"""The node agent: `run_node(NodeConfig(...))` runs one machine's workers until it drains.

    start   check the target and the URLs, serve /metrics and /healthz, watch for spot notices,
            publish the queue's depths to CloudWatch (with node.cloudwatch_namespace)
    size    start one worker, measure its warm PSS, N = min(by cores, by memory) (or --workers)
    watch   restart crashed workers; with exit_when_empty, drain once the queue has nothing left
    drain   on SIGTERM / SIGINT (to the agent or to any process of the node) / spot notice /
            empty queue: workers stop receiving, in-flight tasks get `grace_s` to finish, the
            rest are released (visible again at once); a second signal to the agent releases
            them now. The report says whether the drain was clean (`NodeReport.clean`).

The agent holds no message itself; it opens the broker only to read queue depths.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetinfer.deadlines import DEADLINE_ENV, ModelDeadlines
from fleetinfer.errors import ConfigError, TransientError
from fleetinfer.node.health import HealthServer
from fleetinfer.node.leftovers import remove_leftovers
from fleetinfer.node.logs import ProgressLine, log_task
from fleetinfer.node.metrics import NodeMetrics
from fleetinfer.node.model_server import SOCKET_ENV, ModelServerProcess, ServerOptions
from fleetinfer.node.preemption import DrainSignal, SpotWatcher, install_drain_handlers
from fleetinfer.node.signals import AGENT_PID_ENV
from fleetinfer.node.sizing import (
    DEFAULT_RESERVE_BYTES,
    WorkerPlan,
    measure_host,
    plan_workers,
    pss_bytes,
)
from fleetinfer.node.supervisor import RestartPolicy, Supervisor
from fleetinfer.node.worker import WorkerConfig
from fleetinfer.queue.base import MAX_MESSAGE_BYTES, Broker

if TYPE_CHECKING:
    from fleetinfer.node.cloudwatch import CloudWatchOptions, CloudWatchPublisher
    from fleetinfer.registry.node import NodeRegistry

log = logging.getLogger("fleetinfer.node")

DEFAULT_QUEUE_URL = "sqlite:///.fleetinfer/queue.db"
DEFAULT_RESULTS_URL = "sqlite:///.fleetinfer/results.db"
WORKER_NICE_WITH_SERVER = 10  # CFS weight 110 against the server's 1024
SERVER_CLIENTS = ("shared", "triton")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Everything `run_node` needs; the CLI builds one from its options."""

    target: str
    queue_url: str = DEFAULT_QUEUE_URL
    results_url: str = DEFAULT_RESULTS_URL
    models: Path | None = None
    client_mode: str = "inprocess"
    workers: int | None = None
    grace_s: float = 100.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 0
    spot_endpoint: str | None = None
    spot_interval_s: float = 5.0
    exit_when_empty: bool = False
    max_message_bytes: int = MAX_MESSAGE_BYTES
    receive_wait_s: float = 1.0
    task_backoff_base_s: float = 1.0
    task_backoff_max_s: float = 300.0
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    cores_per_worker: float = 1.0
    memory_reserve_bytes: int = DEFAULT_RESERVE_BYTES
    warmup_s: float = 10.0
    poll_interval_s: float = 0.2
    verbose: bool = False
    server_intra_op_threads: int | None = None
    preload_workers: bool = True  # fork workers from a zygote that imported the task once
    server_instance_count: int | None = None
    worker_intra_op_threads: int | None = None
    triton_url: str | None = None
    worker_nice: int | None = None  # None: WORKER_NICE_WITH_SERVER with a model server, else 0
    allow_dead_letters: bool = False  # with exit_when_empty: exit 0 even if tasks went dead
    log_format: str = "text"  # or "json": one object per line (fleetinfer.node.logs)
    progress: bool = False  # a live progress line on stderr when it is a terminal (`run`)
    model_deadlines: str | None = None  # "cdnet=20,60" (`fleetinfer.deadlines`); None: derived
    server_probe_interval_s: float = 2.0
    server_probe_timeout_s: float = 5.0
    server_probe_failures: int = 3  # failed probes in a row before the model server restarts
    labels: dict[str, str] = field(default_factory=dict)  # placement: override node attributes
    devices: int | None = None  # with a model server: one per device (node/placement.py)
    device_kind: str = "cpu"
    registry: NodeRegistry | None = None  # reconcile with a model registry (docs/rollout.md)
    cloudwatch: CloudWatchOptions | None = None  # publish queue depths (node/cloudwatch.py)

    def __post_init__(self) -> None:
        ModelDeadlines.parse(self.model_deadlines)  # a ConfigError now, not in every worker
        if self.worker_nice is not None and not 0 <= self.worker_nice <= 19:
            raise ConfigError(f"worker niceness must be 0..19, got {self.worker_nice!r}")
        if not self.grace_s >= 0:
            raise ConfigError(f"grace_s must be >= 0 seconds, got {self.grace_s!r}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers!r}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(
                f"metrics port must be 0..65535 (0 = any free port), got {self.metrics_port}"
            )
        if self.max_message_bytes < 1:
            raise ConfigError(f"max_message_bytes must be >= 1, got {self.max_message_bytes}")

    @property
    def effective_worker_nice(self) -> int:
        """How much lower than the agent's the workers' CPU priority is. With a model server
        (shared, triton) the workers feed it and the server's executions are what all of them
        wait for: a worker drawing its next windows that preempts an execution mid-run makes
        the model's working set leave the core's caches. Measured with `cdnet-l`, 8 workers on
        2 cores: the node spent about 5 % less CPU per task with the server's threads ahead of
        the workers (README, the `cdnet-l` bench). In process there is nothing to favour: 0."""
        if self.worker_nice is not None:
            return self.worker_nice
        return WORKER_NICE_WITH_SERVER if self.client_mode in SERVER_CLIENTS else 0

    def _drain_margin_s(self) -> float:
        return min(1.0, self.grace_s * 0.2)

    @property
    def kill_after_s(self) -> float:
        """When the agent SIGKILLs workers on drain: at grace_s, a margin after they gave up held
        work (the margin is the time a loaded host takes to release a message and exit)."""
        return self.grace_s

    def worker_config(self) -> WorkerConfig:
        """What each worker process gets; it gives up held work a little before the agent kills it."""
        return WorkerConfig(
            target=self.target,
            queue_url=self.queue_url,
            results_url=self.results_url,
            models=None if self.models is None else str(self.models),
            client_mode=self.client_mode,
            intra_op_threads=self.worker_intra_op_threads,
            triton_url=self.triton_url,
            wait_s=self.receive_wait_s,
            max_message_bytes=self.max_message_bytes,
            grace_s=self.grace_s - self._drain_margin_s(),
            backoff_base_s=self.task_backoff_base_s,
            backoff_max_s=self.task_backoff_max_s,
            nice=self.effective_worker_nice,
            log_format=self.log_format,
            attributes=self.attributes,
        )

    @property
    def attributes(self) -> dict[str, str]:
        """What this node can run: detected attributes with `labels` over them (placement)."""
        from fleetinfer.node.attributes import node_attributes

        return node_attributes(self.labels)


@dataclass(frozen=True, slots=True)
class NodeStarted:
    """Told to `on_ready` once the workers run: where to scrape, how many, why that many."""

    pid: int
    metrics_url: str | None
    plan: WorkerPlan


@dataclass(frozen=True, slots=True)
class NodeReport:
    """How a node run ended."""

    reason: str
    plan: WorkerPlan
    outcomes: dict[str, int]
    restarts: int
    duration_s: float
    drain_s: float
    clean: bool = True  # every task running at the drain finished: none released, none killed


def run_node(
    config: NodeConfig,
    *,
    on_ready: Callable[[NodeStarted], None] | None = None,
    handle_signals: bool = True,
) -> NodeReport:
    """Run the node until it drains; SIGTERM / SIGINT drain it when `handle_signals` is True."""
    agent = NodeAgent(config)
    restore = _maybe_install_handlers(agent.drain, handle_signals)
    try:
        return agent.run(on_ready)
    finally:
        restore()


def _maybe_install_handlers(drain: DrainSignal, wanted: bool) -> Callable[[], None]:
    if wanted and threading.current_thread() is threading.main_thread():
        return install_drain_handlers(drain)
    return lambda: None


class NodeAgent:
    """One node: its workers, metrics, health endpoint and drain."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.drain = DrainSignal()
        self.metrics = NodeMetrics()
        self.supervisor = Supervisor(
            config.worker_config(),
            on_event=self._on_worker_event,
            on_restart=lambda _slot: self.metrics.restarts.inc(),
            policy=config.restart,
            verbose=config.verbose,
            preload=config.preload_workers,
            on_signal=self.drain.request,
        )
        self._health: HealthServer | None = None
        self._spot: SpotWatcher | None = None
        self._server: ModelServerProcess | None = None
        self._servers: list[ModelServerProcess] = []  # one per device (`devices`)
        self._broker: Broker | None = None
        self._cloudwatch: CloudWatchPublisher | None = None
        self._reconciler: Any = None  # fleetinfer.registry.reconcile.Reconciler
        self._empty_checks = 0
        self._started = False
        self.progress = ProgressLine(wanted=config.progress)  # on a terminal only

    # -- the run -----------------------------------------------------------------------------

    def run(self, on_ready: Callable[[NodeStarted], None] | None = None) -> NodeReport:
        started = time.monotonic()
        self._check_config()  # nothing started yet: a failure is one error, nothing to drain
        try:
            self._start_services()
            plan = self._start_workers()
            self._started = True
            if on_ready is not None:
                on_ready(NodeStarted(os.getpid(), self._metrics_url(), plan))
            self._watch()
            drain_started = time.monotonic()
            self._drain()
            drain_s = time.monotonic() - drain_started
        finally:
            self._stop_services()
        reason = self.drain.reason or "stopped"
        outcomes = self.metrics.outcome_counts()
        restarts = self.supervisor.restarts
        duration_s = time.monotonic() - started
        return NodeReport(reason, plan, outcomes, restarts, duration_s, drain_s, self._clean())

    def _clean(self) -> bool:
        """Every task running when the drain began finished within the grace."""
        unfinished = self.metrics.outcome_counts()["abandoned"]
        unfinished += self.supervisor.killed_on_stop + self.supervisor.failed_on_stop
        return unfinished == 0 and not self.drain.hurry.is_set()

    def _check_config(self) -> None:
        """Fail before starting anything: the target imports, the client mode has what it
        needs, the models load, the queue and store answer (`preflight`)."""
        from fleetinfer.node import preflight
        from fleetinfer.queue.placed import PlacedBroker

        cloudwatch = preflight.check_cloudwatch(self.config)  # before the queue opens
        self._broker = PlacedBroker(preflight.check_node(self.config), self.config.attributes)
        collector = self.metrics.watch_queue(self._broker)
        if self.config.cloudwatch is not None:
            from fleetinfer.node.cloudwatch import CloudWatchPublisher

            self._cloudwatch = CloudWatchPublisher(
                cloudwatch, collector, self.config.cloudwatch, self.metrics.registry
            )

    def _start_services(self) -> None:
        remove_leftovers()
        self.supervisor.env[AGENT_PID_ENV] = str(os.getpid())
        if self.config.model_deadlines:
            self.supervisor.env[DEADLINE_ENV] = self.config.model_deadlines
        if self.config.metrics_port is not None:
            self._health = HealthServer(
                host=self.config.metrics_host,
                port=self.config.metrics_port,
                metrics=self.metrics.exposition,
                health=self.health,
                ready=self.readiness,
            ).start()
        if self._cloudwatch is not None:
            self._cloudwatch.start()  # its first reading now, not after the models load
        self._start_model_server()
        self._start_reconcile()
        if self.config.spot_endpoint is not None:
            self._spot = SpotWatcher(
                self.drain,
                endpoint=self.config.spot_endpoint,
                interval_s=self.config.spot_interval_s,
            ).start()

    def _start_model_server(self) -> None:
        """In shared mode with a model repository, the node runs its own model server."""
        if self.config.client_mode != "shared" or self.config.models is None:
            return
        options = ServerOptions(
            models=self.config.models,
            intra_op_threads=self.config.server_intra_op_threads,
            instance_count=self.config.server_instance_count,
            probe_interval_s=self.config.server_probe_interval_s,
            probe_timeout_s=self.config.server_probe_timeout_s,
            probe_failures=self.config.server_probe_failures,
        )
        if self.config.devices is not None:
            self._start_device_servers(options)
            return
        self._server = server = self._start_server(options)
        self.supervisor.env[SOCKET_ENV] = str(self._server.socket_path)
        self.metrics.add_scrape(lambda: _scrape_url(server))

    def _start_server(self, options: ServerOptions) -> ModelServerProcess:
        """One model server that tells the agent of its signals, probed from now on."""
        server = ModelServerProcess(options, on_signal=self.drain.request).start()
        server.start_probe()
        return server

    def _start_device_servers(self, options: ServerOptions) -> None:
        """One model server per device, each pinned; workers spread over them (placement)."""
        from fleetinfer.node.placement import device_plans, start_device_servers

        assert self.config.devices is not None
        plans = device_plans(self.config.device_kind, self.config.devices)
        self._servers, env = start_device_servers(options, plans, self._start_server)
        self.supervisor.env.update(env)
        for server in self._servers:
            self.metrics.add_scrape(lambda s=server: _scrape_url(s))  # type: ignore[misc]

    def _start_reconcile(self) -> None:
        from fleetinfer.registry.node import start_reconcile

        server = self._server
        socket_path, url = (server.socket_path, server.metrics_url) if server else (None, None)
        self._reconciler = start_reconcile(
            self.config.registry, self.config.models, socket_path, url
        )

    def _start_workers(self) -> WorkerPlan:
        if self.config.workers is not None:
            plan = plan_workers(
                measure_host(), worker_pss_bytes=None, requested=self.config.workers
            )
        else:
            self.supervisor.scale_to(1)
            plan = self._measure_and_plan()
        log.info("starting %d workers (%s)", plan.workers, plan.reason)
        self.supervisor.scale_to(plan.workers)
        self.metrics.workers_alive.set(plan.workers)
        return plan

    def _measure_and_plan(self) -> WorkerPlan:
        pid = self.supervisor.first_pid(timeout_s=max(60.0, self.config.warmup_s))
        self._wait_warm()
        return plan_workers(
            measure_host(),
            worker_pss_bytes=pss_bytes(pid),
            cores_per_worker=self.config.cores_per_worker,
            reserve_bytes=self.config.memory_reserve_bytes,
            running_workers=1,
        )

    def _wait_warm(self) -> None:
        """Until the first worker finished a task (so its model is loaded), at most warmup_s."""
        deadline = time.monotonic() + self.config.warmup_s
        while time.monotonic() < deadline and not self.drain.is_set():
            if sum(self.metrics.outcome_counts().values()) > 0 or self._queue_is_empty():
                return
            time.sleep(0.05)

    def _watch(self) -> None:
        while not self.drain.wait(self.config.poll_interval_s):
            self.supervisor.poll()
            for server in [self._server, *self._servers]:
                if server is not None:
                    server.poll()
            self.metrics.workers_alive.set(self.supervisor.alive())
            if self.supervisor.fatal is not None:
                raise ConfigError(f"a worker cannot run: {self.supervisor.fatal}")
            if self.config.exit_when_empty and self._queue_is_empty():
                self.drain.request("the queue is empty", routine=True)

    def _queue_is_empty(self) -> bool:
        """Two empty readings in a row (SQS depths are approximate)."""
        assert self._broker is not None
        try:
            empty = self._broker.stats().pending == 0
        except TransientError as exc:
            log.warning("cannot read queue depths: %s", exc)
            empty = False
        self._empty_checks = self._empty_checks + 1 if empty else 0
        return self._empty_checks >= 2

    def _drain(self) -> None:
        self.metrics.draining.set(1)
        if self._cloudwatch is not None:
            self._cloudwatch.publish_soon()
        log.info("draining: %s; grace %.0f s", self.drain.reason, self.config.grace_s)
        self.supervisor.stop(self.config.kill_after_s, hurry=self.drain.hurry)
        self.metrics.workers_alive.set(0)

    def _stop_services(self) -> None:
        if not self.drain.is_set():
            self.drain.request("the agent failed", routine=True)  # its error is reported
            self.supervisor.stop(self.config.kill_after_s)
        if self._reconciler is not None:
            self._reconciler.stop()
        for server in [self._server, *self._servers]:
            if server is not None:
                server.cleanup()
        if self._spot is not None:
            self._spot.stop()
        if self._cloudwatch is not None:
            self._cloudwatch.stop()  # a last reading, while the queue is still open
        if self._health is not None:
            self._health.stop()
        if self._broker is not None:
            self._broker.close()
        self.progress.close()

    # -- observers ---------------------------------------------------------------------------

    def _on_worker_event(self, slot: int, event: dict[str, Any]) -> None:
        if event["event"] == "signal":  # a worker got SIGTERM / SIGINT: the node drains
            self.drain.request(f"{event.get('signal')} to worker {event.get('pid')}")
            return
        self.metrics.record_event(event)
        if event["event"] == "task":
            log_task(event)
            self.progress.record(event)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while not draining, at least one worker runs and the model server (if the
        node runs one) answered its last probe."""
        pids = self.supervisor.pids()
        draining = self.drain.is_set()
        servers = [s for s in (self._server, *self._servers) if s is not None]
        answering = all(server.answering for server in servers)
        status = "ok" if pids else "no workers"
        status = status if answering else "model server not answering"
        body = {
            "status": "draining" if draining else status,
            "model_server_answering": answering,
            "model_server_pid": servers[0].pid if servers else None,
            "model_server_pids": [server.pid for server in servers],
            "workers_alive": len(pids),
            "worker_pids": pids,
            "restarts": self.supervisor.restarts,
            "draining": draining,
            "drain_reason": self.drain.reason,
            "outcomes": self.metrics.outcome_counts(),
        }
        return (bool(pids) and not draining and answering), body

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready (for an orchestrator) while the node can take work: healthy, and started."""
        healthy, body = self.health()
        if not self._started and not self.drain.is_set():
            body["status"] = "starting"
        return healthy and self._started, body

    def _metrics_url(self) -> str | None:
        return None if self._health is None else self._health.url


def _scrape_url(server: ModelServerProcess) -> str | None:
    """Where the node's /metrics reads the server's metrics; None while the server does not
    answer its probes (a hung server must not slow the node's own scrape)."""
    return server.metrics_url if server.answering else None
