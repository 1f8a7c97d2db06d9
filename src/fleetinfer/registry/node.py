"""The node agent's side of the registry: its settings and the reconcile loop it starts.

With `registry = "s3://…"` in `[node]` (with `client = "shared"` and `models = DIR`), the agent
starts a `Reconciler` after its model server: the node's attributes are detected (IMDSv2 with a
short timeout), `labels` ("group=a,zone=x") added and `attributes` overrides applied; reloads go
through the server's control `reload` (its one reload path); health comes from the server's
`nv_inference_*` counters (requests, failures, and mean queue + compute time per request, the
latency the node reports as its p95 until it keeps a latency histogram).
"""

from __future__ import annotations

import re
import socket
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from fleetinfer.errors import ConfigError, FleetinferError
from fleetinfer.registry.attributes import detect_attributes
from fleetinfer.registry.reconcile import Reconciler
from fleetinfer.registry.registry import Registry, VersionHealth

_SAMPLE = re.compile(
    r'^(nv_inference_\w+?)(?:_total)?\{model="([^"]+)",version="(\d+)"\}\s+([0-9.eE+-]+)$'
)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRegistry:
    url: str
    node: str = field(default_factory=socket.gethostname)
    labels: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)
    interval_s: float = 30.0


def parse_pairs(text: str, where: str) -> dict[str, str]:
    """`"group=a,zone=x"` as a dict; a term without `=` is a `ConfigError` naming `where`."""
    pairs: dict[str, str] = {}
    for term in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = term.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where}: {term!r} is not KEY=VALUE (terms joined with commas)")
        pairs[key.strip()] = value.strip()
    return pairs


class ServerHealth:
    """Health per model version from the model server's metrics endpoint."""

    def __init__(self, metrics_url: str | None) -> None:
        self.metrics_url = metrics_url

    def snapshot(self) -> dict[str, dict[str, VersionHealth]]:
        if self.metrics_url is None:
            return {}
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return {}
        values: dict[tuple[str, str], dict[str, float]] = {}
        for line in text.splitlines():
            match = _SAMPLE.match(line)
            if match:
                name, model, version, value = match.groups()
                values.setdefault((model, version), {})[name] = float(value)
        found: dict[str, dict[str, VersionHealth]] = {}
        for (model, version), v in values.items():
            ok = int(v.get("nv_inference_request_success", 0))
            busy_us = v.get("nv_inference_queue_duration_us", 0) + v.get(
                "nv_inference_compute_infer_duration_us", 0
            )
            errors = int(v.get("nv_inference_request_failure", 0))
            mean_ms = busy_us / 1000 / ok if ok else 0.0
            found.setdefault(model, {})[version] = VersionHealth(ok + errors, errors, mean_ms)
        return found


def start_reconcile(
    settings: NodeRegistry | None,
    models: Path | None,
    socket_path: Path | None,
    metrics_url: str | None,
) -> Reconciler | None:
    """The node's reconcile loop, started; None without a registry."""
    if settings is None:
        return None
    if models is None or socket_path is None:
        raise ConfigError(
            f"node.registry {settings.url!r} needs the node's model server: set "
            'node.client = "shared" and node.models = DIR (where the registry\'s versions go)'
        )
    from fleetinfer.client import SharedModelClient

    client = SharedModelClient(socket_path)

    def reload(model: str) -> list[FleetinferError]:
        try:
            client.control("reload", model)
        except FleetinferError as exc:
            return [exc]
        return []

    attributes = detect_attributes(
        settings.node, labels=settings.labels, overrides=settings.overrides
    )
    return Reconciler(
        Registry.from_url(settings.url),
        attributes,
        models,
        reload,
        health=ServerHealth(metrics_url),
        interval_s=settings.interval_s,
    ).start()
