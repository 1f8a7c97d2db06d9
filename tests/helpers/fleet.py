"""Nodes for registry and rollout tests: a real model server each, its reconcile loop, and a
traffic thread calling the model as a node's tasks would, attributing each answer to a version."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from fleetinfer.client import SharedModelClient
from fleetinfer.compile.compiler import CompileRequest, compile_model
from fleetinfer.registry.reconcile import HealthBook, Reconciler
from fleetinfer.registry.registry import Registry
from fleetinfer.server.server import ModelServer, ServerConfig

CDNET = Path(__file__).parents[2] / "roadchange" / "src" / "roadchange" / "models" / "cdnet"


def cdnet_repository(root: Path) -> Path:
    """cdnet v1 (FP32, shipped), v2 (INT8 from `compile`), v3 (v1 with every logit negated:
    its decisions are wrong, the quality gate must refuse it)."""
    repo = root / "repo"
    shutil.copytree(CDNET, repo / "cdnet")
    from roadchange.compile_plugin import PLUGIN

    request = CompileRequest(repository=repo, model="cdnet", precision="int8", measure=False)
    compile_model(request, calibration=PLUGIN.calibration(segments=1))
    (repo / "cdnet" / "3").mkdir()
    onnx.save(
        degraded(onnx.load(str(repo / "cdnet" / "1" / "model.onnx"))),
        str(repo / "cdnet" / "3" / "model.onnx"),
    )
    return repo


def degraded(model: onnx.ModelProto) -> onnx.ModelProto:
    for output in model.graph.output:
        for node in model.graph.node:
            node.output[:] = [f"{o}_raw" if o == output.name else o for o in node.output]
        model.graph.node.append(helper.make_node("Neg", [f"{output.name}_raw"], [output.name]))
    return model


class Node:
    """One node: model server, reconciler polling every `interval_s`, and traffic."""

    def __init__(
        self,
        registry: Registry,
        root: Path,
        name: str,
        labels: dict[str, str],
        interval_s: float = 0.2,
    ) -> None:
        self.models = root / name / "models"
        self.models.mkdir(parents=True)
        config = ServerConfig(
            models=self.models, socket_path=root / name / "sock" / "s.sock", metrics_port=None
        )
        self.server = ModelServer(config).start()
        attributes = {
            "node": name,
            "arch": "x86_64",
            "cpu_features": "",
            "accelerators": "",
            **labels,
        }
        self.health = HealthBook()
        self.reconciler = Reconciler(
            registry,
            attributes,
            self.models,
            self.server.reload,
            health=self.health,
            interval_s=interval_s,
        )
        self.answered: Counter[int] = Counter()  # version -> calls
        self.failed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Node:
        self.reconciler.start()
        self._thread = threading.Thread(target=self._traffic, daemon=True)
        self._thread.start()
        return self

    def _traffic(self) -> None:
        client = SharedModelClient(self.server.config.socket_path)
        raster = np.random.default_rng(0).standard_normal((1, 9, 128, 128), dtype=np.float32)
        try:
            while not self._stop.is_set():
                version = self.reconciler.served.get("cdnet")
                if version is None:
                    time.sleep(0.05)
                    continue
                self._call(client, raster)
        finally:
            client.close()

    def _call(self, client: SharedModelClient, raster: np.ndarray) -> None:  # type: ignore[type-arg]
        """One call, attributed to the version the server had loaded before and after it (a
        reload in between makes it ambiguous: counted under 0)."""
        try:
            before = client.versions("cdnet")
            started = time.perf_counter()
            client.model("cdnet").infer({"raster": raster})
            latency_ms = (time.perf_counter() - started) * 1000
            after = client.versions("cdnet")
        except Exception:
            self.failed += 1
            return
        version = before[-1] if before == after and len(after) == 1 else 0
        self.answered[version] += 1
        if version:
            self.health.record("cdnet", version, latency_ms)
        time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.reconciler.stop()
        self.server.stop()
