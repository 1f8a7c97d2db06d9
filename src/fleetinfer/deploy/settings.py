"""The `[deploy]` table of `fleetinfer.toml`, validated, and what a renderer needs from it.

    [deploy]
    name = "fleetinfer"                 object names, labels
    image = "registry.example/fleetinfer:0.1.0"   one multi-architecture image
    profile = "node.profile.json"       `fleetinfer bench --json` (relative to the file)
    instance_families = ["m7i", "m7g"]  EC2 families, checked against the instance catalog
    min_nodes = 0
    max_nodes = 100
    [deploy.kubernetes]                 namespace, Karpenter node class, PDB
    [deploy.ecs]                        cluster, Auto Scaling groups, secret ARNs, metric

`load_deployment()` reads the file (its `[node]` table is validated by `fleetinfer.config`),
checks `[deploy]` with one schema (every error at once, each with its key path) and then the
cross-checks a fleet needs (a shared queue and results store, a fixed metrics port, a drain
grace that fits in the spot notice, a node that fits in memory on every family), and returns a
`Deployment`: the numbers both renderers use, the backlog policy included.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import parse_qs, urlsplit

import msgspec

from fleetinfer.config import ConfigFile, NodeSettings, load_config_file, namespace_problem
from fleetinfer.errors import ConfigError
from fleetinfer.plan.catalog import Catalog, InstanceType, load_catalog
from fleetinfer.plan.policy import BacklogPolicy, policy_for
from fleetinfer.plan.profile import TaskProfile, load_profile

Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Arch = Literal["amd64", "arm64"]
KUBELET_RESERVED_SHARE = 0.1  # memory a node keeps for the kubelet, the OS and the ECS agent
CATALOG_ARCH = {"x86_64": "amd64", "arm64": "arm64"}
ACCELERATOR_FAMILIES = {"none": ("modern-x86", "older-x86", "graviton"), "gpu": ("gpu",),
                        "neuron": ("inferentia",)}  # fmt: skip


class KubernetesSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    namespace: Name = "fleetinfer"
    node_class: Name = "default"  # the Karpenter EC2NodeClass the NodePool launches from
    max_unavailable: Annotated[str, msgspec.Meta(pattern=r"^[0-9]+%?$")] = "10%"
    secret_name: Name = "fleetinfer-secrets"
    prometheus_scrape: bool = True


class EcsSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    cluster: Name = "fleetinfer"
    spot_auto_scaling_groups: dict[Arch, str] = msgspec.field(default_factory=dict)
    secret_arns: dict[Literal["queue", "results"], str] = msgspec.field(default_factory=dict)
    execution_role_arn: str | None = None  # pulls the image, reads the secrets
    task_role_arn: str | None = None  # the node's own AWS calls: CloudWatch, SQS, S3 registry
    log_group: str = "/fleetinfer/node"
    metric_namespace: str = "Fleetinfer"


class DeploySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name = "fleetinfer"
    image: str = "fleetinfer:latest"
    profile: str | None = None
    mode: str = "shared"
    region: str = "us-east-1"
    instance_families: list[str] = msgspec.field(default_factory=list)
    architectures: list[Arch] = msgspec.field(default_factory=lambda: ["amd64", "arm64"])
    accelerator: Literal["none", "gpu", "neuron"] = "none"
    devices_per_node: Annotated[int, msgspec.Meta(ge=1)] = 1
    min_nodes: NonNegative = 0
    max_nodes: Annotated[int, msgspec.Meta(ge=1)] = 100
    spot_notice_s: Annotated[int, msgspec.Meta(ge=1)] = 120
    termination_margin_s: NonNegative = 15
    shm_mib: Annotated[int, msgspec.Meta(ge=1)] | None = None
    config_path: str = "/etc/fleetinfer/fleetinfer.toml"
    kubernetes: KubernetesSettings = msgspec.field(default_factory=KubernetesSettings)
    ecs: EcsSettings = msgspec.field(default_factory=EcsSettings)


@dataclass(frozen=True, slots=True)
class Queue:
    """The node's queue as an autoscaler reads it."""

    kind: Literal["redis", "sqs"]
    name: str
    address: str  # redis: host:port; sqs: the queue name
    database: int
    region: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment:
    """What both renderers use: settings, sizes from the profile, the backlog policy."""

    node: NodeSettings
    node_table: dict[str, Any]  # the [node] keys as written, for the ConfigMap / environment
    deploy: DeploySettings
    profile: TaskProfile
    queue: Queue
    workers: int
    cpu_millis: int
    memory_mib: int
    shm_mib: int
    termination_grace_s: int
    families: tuple[str, ...]
    architectures: tuple[str, ...]
    policy: BacklogPolicy

    @property
    def metrics_port(self) -> int:
        return self.node.metrics_port


def load_deployment(
    config_path: Path, *, profile_path: Path | None = None, catalog: Catalog | None = None
) -> Deployment:
    """The validated deployment of `config_path` (every error at once, each with its key)."""
    file = load_config_file(config_path)
    deploy = _deploy_settings(file)
    node_table = _node_table(config_path)
    profile_file = profile_path or _profile_from_config(deploy, config_path)
    profile = load_profile(profile_file)
    return _derive(file.node, node_table, deploy, profile, catalog or load_catalog())


def _deploy_settings(file: ConfigFile) -> DeploySettings:
    values, errors = _table(file.deploy, DeploySettings, "deploy")
    if errors:
        raise ConfigError(_report(errors))
    return msgspec.convert(values, type=DeploySettings)


def _table(
    raw: dict[str, Any], kind: type[msgspec.Struct], where: str
) -> tuple[dict[str, Any], list[str]]:
    """Each key of a table converted to its type, nested tables by key: errors collected."""
    errors: list[str] = []
    values: dict[str, Any] = {}
    fields = {f.name: f.type for f in msgspec.structs.fields(kind)}
    for key, value in raw.items():
        path = f"{where}.{key}"
        if key not in fields:
            errors.append(_unknown(path, key, tuple(fields)))
        elif isinstance(fields[key], type) and issubclass(fields[key], msgspec.Struct):
            if not isinstance(value, dict):
                errors.append(f"{path}: expected a table, got {type(value).__name__}")
                continue
            values[key], nested = _table(value, fields[key], path)
            errors += nested
        else:
            try:
                values[key] = msgspec.convert(value, type=fields[key], strict=True)
            except msgspec.ValidationError as exc:
                errors.append(f"{path}: {_message(exc, fields[key])} (got {_short(value)})")
    return values, errors


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(exc: msgspec.ValidationError, kind: Any) -> str:
    """msgspec's message with its `$` path as our key path, and the choices of a Literal."""
    what, _, where = str(exc).replace("`", "").partition(" - at ")
    inside = where.replace("key in $", "a key").replace("$", "").lstrip(".")
    text = f"{what} at {inside}" if inside and inside != "a key" else what
    if inside == "a key":
        text += " as a key"
    choices = sorted({str(c) for arg in _literals(kind) for c in get_args(arg)})
    return text + (f": expected one of {', '.join(choices)}" if choices else "")


def _literals(kind: Any) -> list[Any]:
    """The Literal types inside `kind` (a Literal, list[Literal], dict[Literal, …], …)."""
    if get_origin(kind) is Literal:
        return [kind]
    return [lit for arg in get_args(kind) for lit in _literals(arg)]


def _unknown(where: str, key: str, valid: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"expected one of {', '.join(valid)}"
    return f"{where}: unknown key: {hint}"


def _report(errors: list[str]) -> str:
    if len(errors) == 1:
        return f"cannot render the deployment: {errors[0]}"
    return f"cannot render the deployment ({len(errors)} errors): " + "; ".join(errors)


def _node_table(config_path: Path) -> dict[str, Any]:
    import tomllib

    raw = tomllib.loads(config_path.read_text("utf-8"))
    node = raw.get("node", {})
    return dict(node) if isinstance(node, dict) else {}


def _profile_from_config(deploy: DeploySettings, config_path: Path) -> Path:
    if deploy.profile is None:
        raise ConfigError(
            "cannot render the deployment: no bench profile: give --profile "
            "(the JSON of `fleetinfer bench --json`) or set deploy.profile"
        )
    return (config_path.parent / deploy.profile).resolve()


# -- cross-checks and sizes -------------------------------------------------------------------


def _derive(
    node: NodeSettings,
    node_table: dict[str, Any],
    deploy: DeploySettings,
    profile: TaskProfile,
    catalog: Catalog,
) -> Deployment:
    """Every cross-check at once, then the sizes."""
    errors = _node_checks(node, deploy)
    queue, queue_error = _queue(node.queue, deploy.region)
    types, family_errors = _family_types(deploy, catalog)
    workers, worker_error = _workers(node, profile)
    errors += [e for e in (queue_error, worker_error) if e] + family_errors
    if deploy.mode not in profile.modes:
        errors.append(
            f"deploy.mode: the profile {profile.source} has no {deploy.mode!r} mode; "
            f"it has {sorted(profile.modes)}"
        )
    elif workers:
        errors += _fit_errors(
            _memory_mib(profile, deploy.mode, workers), profile, deploy, workers, types
        )
    if deploy.min_nodes > deploy.max_nodes:
        errors.append("deploy.min_nodes: must not exceed deploy.max_nodes")
    errors += _metric_namespace_errors(deploy.ecs.metric_namespace)
    if errors or queue is None:
        raise ConfigError(_report(errors))
    return _sized(node, node_table, deploy, profile, queue, workers)


def _metric_namespace_errors(namespace: str) -> list[str]:
    """The namespace the nodes publish to and the ECS policy reads: one CloudWatch takes."""
    problem = namespace_problem(namespace) if namespace else "expected a CloudWatch namespace"
    return (
        [] if problem is None else [f"deploy.ecs.metric_namespace: {problem} (got {namespace!r})"]
    )


def _memory_mib(profile: TaskProfile, mode: str, workers: int) -> int:
    footprint = profile.mode(mode).footprint
    return math.ceil(footprint.node_fixed_mib + workers * footprint.worker_mib)


def _sized(
    node: NodeSettings,
    node_table: dict[str, Any],
    deploy: DeploySettings,
    profile: TaskProfile,
    queue: Queue,
    workers: int,
) -> Deployment:
    footprint = profile.mode(deploy.mode).footprint
    busy_share = min(1.0, footprint.task_cpu_s / max(footprint.task_wall_s, 1e-9))
    cpu_millis = max(100, math.ceil(workers * busy_share * 10) * 100)
    return Deployment(
        node=node,
        node_table=node_table,
        deploy=deploy,
        profile=profile,
        queue=queue,
        workers=workers,
        cpu_millis=cpu_millis,
        memory_mib=_memory_mib(profile, deploy.mode, workers),
        shm_mib=deploy.shm_mib or math.ceil(footprint.node_fixed_mib) or 64,
        termination_grace_s=math.ceil(node.grace_s) + deploy.termination_margin_s,
        families=tuple(deploy.instance_families),
        architectures=tuple(deploy.architectures),
        policy=policy_for(workers, floor_nodes=deploy.min_nodes, ceiling_nodes=deploy.max_nodes),
    )


def _node_checks(node: NodeSettings, deploy: DeploySettings) -> list[str]:
    errors = []
    if node.target is None:
        errors.append("node.target: a deployed node needs its task target (APP:TASK)")
    if node.metrics_port < 1:
        errors.append(
            f"node.metrics_port: the probes and the scraper need a fixed port, got "
            f"{node.metrics_port}: set one, e.g. 9090"
        )
    if node.metrics_host != "0.0.0.0":
        errors.append(
            f"node.metrics_host: the kubelet and Prometheus reach the node from outside its "
            f'container: set "0.0.0.0", got {node.metrics_host!r}'
        )
    if not node.results.startswith(("postgresql://", "postgres://")):
        errors.append(
            "node.results: a fleet shares one results store: expected postgresql://…, got "
            f"{node.results.partition(':')[0]}://…"
        )
    if math.ceil(node.grace_s) + deploy.termination_margin_s > deploy.spot_notice_s:
        errors.append(
            f"node.grace_s: {node.grace_s:g} s of drain plus deploy.termination_margin_s "
            f"{deploy.termination_margin_s} s is longer than the spot notice "
            f"(deploy.spot_notice_s = {deploy.spot_notice_s} s): the node would be cut off "
            f"mid-drain; lower node.grace_s to at most "
            f"{deploy.spot_notice_s - deploy.termination_margin_s}"
        )
    return errors


def _queue(url: str, region: str) -> tuple[Queue | None, str | None]:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme in ("redis", "rediss"):
        host = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        database = int(parts.path.strip("/") or 0) if parts.path.strip("/").isdigit() else 0
        return Queue("redis", query.get("queue", "default"), host, database, region), None
    if parts.scheme == "sqs":
        name = parts.netloc or parts.path.strip("/")
        return Queue("sqs", name, name, 0, query.get("region", region)), None
    return None, (
        f"node.queue: a fleet shares one queue that an autoscaler can read: expected "
        f"redis://… or sqs://…, got {parts.scheme or url!r}://…"
    )


def _family_types(deploy: DeploySettings, catalog: Catalog) -> tuple[list[InstanceType], list[str]]:
    known: dict[str, list[InstanceType]] = {}
    for instance in catalog.types.values():
        known.setdefault(instance.name.partition(".")[0], []).append(instance)
    if not deploy.instance_families:
        return [], [
            'deploy.instance_families: list the EC2 families to run on, e.g. ["m7i", "m7g"]'
        ]
    errors, types = [], []
    allowed = ACCELERATOR_FAMILIES[deploy.accelerator]
    for index, family in enumerate(deploy.instance_families):
        where = f"deploy.instance_families[{index}]"
        if family not in known:
            errors.append(
                f"{where}: unknown instance family {family!r}: the catalog ({catalog.as_of}) "
                f"has {', '.join(sorted(known))}"
            )
            continue
        kinds = {t.family for t in known[family]}
        if not kinds & set(allowed):
            errors.append(
                f"{where}: {family!r} is a {'/'.join(sorted(kinds))} family, but "
                f"deploy.accelerator = {deploy.accelerator!r} runs on {', '.join(allowed)}"
            )
        arches = {CATALOG_ARCH.get(t.arch, t.arch) for t in known[family]}
        if not arches & set(deploy.architectures):
            errors.append(
                f"{where}: {family!r} is {'/'.join(sorted(arches))}, not in deploy.architectures"
            )
        types += known[family]
    return types, errors


def _workers(node: NodeSettings, profile: TaskProfile) -> tuple[int, str | None]:
    if node.workers is not None:
        return node.workers, None
    if profile.bench_workers:
        return int(profile.bench_workers), None
    return 0, "node.workers: set the workers per node (the profile does not say how many it ran)"


def _fit_errors(
    memory_mib: int,
    profile: TaskProfile,
    deploy: DeploySettings,
    workers: int,
    types: list[InstanceType],
) -> list[str]:
    """Every family needs one catalog size that holds the node; else name the key."""
    model_mib = profile.mode(deploy.mode).footprint.node_fixed_mib
    by_family: dict[str, float] = {}
    for t in types:
        family = t.name.partition(".")[0]
        by_family[family] = max(by_family.get(family, 0.0), t.memory_gib * 1024.0)
    errors = []
    for index, family in enumerate(deploy.instance_families):
        usable_mib = by_family.get(family, 0.0) * (1.0 - KUBELET_RESERVED_SHARE)
        if usable_mib and memory_mib > usable_mib:
            errors.append(
                f"deploy.instance_families[{index}]: the node needs {memory_mib} MiB (model "
                f"footprint {model_mib:.0f} MiB + {workers} workers) but {family!r} offers at "
                f"most {usable_mib:.0f} MiB usable in the catalog: choose a larger family "
                "or lower node.workers"
            )
    return errors
