"""One node configuration: `fleetinfer.toml`, then `FLEETINFER_*` variables, then flags.

    [node]                                   every setting of `fleetinfer run`
    target = "tasks:app"
    queue = "redis://queue.internal:6379/0?queue=segments"
    queue_password_env = "QUEUE_PASSWORD"    secrets come from a file or a variable ...
    results = "postgresql://fleet@db.internal/results"
    results_password_file = "/run/secrets/results"   ... and are merged into the URL in memory
    workers = 8
    metrics_host = "0.0.0.0"

    [deploy]                                 read by `fleetinfer deploy render` (not by nodes)

`load_settings()` reads `fleetinfer.toml` in the working directory (or the file given), lays
the environment and then the flags over it, and validates the result with one schema
(`NodeSettings`): every error at once, each with its key path, an unknown key with the closest
valid name. `NodeSettings.node_config()` merges the secrets into the URLs and builds the
`NodeConfig` the agent runs; `NodeSettings.masked()` is what `fleetinfer config show` prints.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_origin
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec

from fleetinfer.errors import ConfigError

if TYPE_CHECKING:
    from fleetinfer.node.agent import NodeConfig
    from fleetinfer.node.cloudwatch import CloudWatchOptions
    from fleetinfer.registry.node import NodeRegistry

CONFIG_FILE = "fleetinfer.toml"
ENV_PREFIX = "FLEETINFER_"
MASK = "***"
SECRET_URL_KEYS = ("queue", "results")

Positive = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=-1, le=65535)]
Nice = Annotated[int, msgspec.Meta(ge=0, le=19)]
CLOUDWATCH_NAMESPACE = re.compile(r"^[0-9A-Za-z.\-_/#: ]{1,255}$")
AWS_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")


class NodeSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The `[node]` table: what `fleetinfer run` takes, key for flag (`--grace-s` is `grace_s`)."""

    target: str | None = None
    queue: str = "sqlite:///.fleetinfer/queue.db"
    queue_password_file: str | None = None
    queue_password_env: str | None = None
    results: str = "sqlite:///.fleetinfer/results.db"
    results_password_file: str | None = None
    results_password_env: str | None = None
    models: str | None = None
    client: Literal["inprocess", "shared", "triton"] = "inprocess"
    triton_url: str | None = None
    workers: Positive | None = None
    grace_s: Seconds = 100.0
    metrics_host: str = "127.0.0.1"
    metrics_port: Port = 0
    spot_endpoint: str | None = None
    spot_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    exit_when_empty: bool = False
    allow_dead_letters: bool = False
    max_message_bytes: Positive = 256 * 1024
    restart_backoff_s: Seconds = 0.5
    restart_backoff_max_s: Seconds = 30.0
    preload: bool = True
    worker_nice: Nice | None = None
    log_format: Literal["text", "json"] = "text"
    model_deadline_s: str | None = None
    server_probe_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    server_probe_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    server_probe_failures: Positive = 3
    # the model server's layout for every model, over the repository's `[instances] count` and
    # `intra_op_threads` (`fleetinfer bench` reports the layout it measured: server_instances,
    # server_threads); None: the repository's
    server_instances: Positive | None = None
    server_threads: Positive | None = None
    verbose: bool = False
    labels: dict[str, str] = msgspec.field(default_factory=dict)  # placement: arch, label.<name>
    devices: Positive | None = None  # one model server per device (client = "shared")
    device_kind: Literal["cpu", "cuda", "neuron"] = "cpu"
    registry: str | None = None  # file:///… or s3://bucket/prefix: what this node serves
    registry_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    node_name: str | None = None  # default: the hostname
    attributes: str = ""  # overrides of detected ones: "instance_type=c7i.4xlarge,lifecycle=spot"
    cloudwatch_namespace: str | None = None  # publish queue depths to CloudWatch; None, "": off
    cloudwatch_region: str | None = None  # None: boto3's default chain (AWS_REGION, profile, …)
    cloudwatch_endpoint_url: str | None = None  # a VPC endpoint, or a test's moto server
    cloudwatch_interval_s: Annotated[float, msgspec.Meta(ge=1)] = 60.0  # < 60: high resolution

    def secrets(self) -> dict[str, str]:
        """The passwords the settings point to, by URL key (read now: a file or a variable)."""
        found: dict[str, str] = {}
        for key in SECRET_URL_KEYS:
            secret = _read_secret(
                key, getattr(self, f"{key}_password_file"), getattr(self, f"{key}_password_env")
            )
            if secret is not None:
                found[key] = secret
        return found

    def urls(self) -> dict[str, str]:
        """The queue and results URLs with their secrets merged in (in memory only)."""
        secrets = self.secrets()
        return {
            key: with_password(getattr(self, key), secrets[key])
            if key in secrets
            else getattr(self, key)
            for key in SECRET_URL_KEYS
        }

    def masked(self) -> dict[str, Any]:
        """Every setting, with any password in a URL shown as ***."""
        shown: dict[str, Any] = msgspec.to_builtins(self)
        for key in SECRET_URL_KEYS:
            shown[key] = mask_url(shown[key])
        for key in ("spot_endpoint", "triton_url", "cloudwatch_endpoint_url"):
            if shown[key] is not None:
                shown[key] = mask_url(shown[key])
        return shown


class ConfigFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A whole `fleetinfer.toml`: the node's table, and room for the deployment's."""

    node: NodeSettings = msgspec.field(default_factory=NodeSettings)
    deploy: dict[str, Any] = msgspec.field(default_factory=dict)


SETTING_NAMES = tuple(f.name for f in msgspec.structs.fields(NodeSettings))
_FIELD_TYPES = {f.name: f.type for f in msgspec.structs.fields(NodeSettings)}


def env_name(key: str) -> str:
    """The environment variable of a `[node]` key: `grace_s` -> `FLEETINFER_GRACE_S`."""
    return ENV_PREFIX + key.upper()


# -- loading -----------------------------------------------------------------------------------


def load_settings(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    cwd: Path | None = None,
) -> NodeSettings:
    """The effective node settings: the file (`path`, else ./fleetinfer.toml if present), then
    `FLEETINFER_*` variables, then `overrides` (flags; None values are flags not given)."""
    raw = _read_file(path, cwd or Path.cwd())
    node_raw = raw.get("node", {}) if isinstance(raw.get("node", {}), dict) else {}
    errors = _check_top_level(raw)
    values, file_errors = _typed(node_raw, prefix="node.", strict=True)
    env_values, env_errors = _typed(_from_environment(environ), prefix="$", strict=False)
    flag_values, flag_errors = _typed(
        {k: v for k, v in (overrides or {}).items() if v is not None}, prefix="--", strict=True
    )
    errors += file_errors + env_errors + flag_errors
    merged = {**values, **env_values, **flag_values}
    if not errors:
        errors += _cross_checks(merged)
    if errors:
        raise ConfigError(_report(errors))
    return msgspec.convert(merged, type=NodeSettings)


def load_config_file(path: Path | None = None, *, cwd: Path | None = None) -> ConfigFile:
    """The whole file as written (no environment, no flags): its validated `[node]` table and
    its `[deploy]` table as it stands, for `fleetinfer deploy render`, which validates that."""
    raw = _read_file(path, cwd or Path.cwd())
    node = load_settings(path, environ={}, cwd=cwd)
    deploy = raw.get("deploy", {})
    return ConfigFile(node=node, deploy=deploy if isinstance(deploy, dict) else {})


def _read_file(path: Path | None, cwd: Path) -> dict[str, Any]:
    if path is None:
        default = cwd / CONFIG_FILE
        if not default.is_file():
            return {}
        path = default
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"configuration file {str(path)!r} does not exist: give an existing file to "
            f"--config, or leave it out to use ./{CONFIG_FILE} when there is one"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {str(path)!r}: {exc}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {str(path)!r} is not valid TOML: {exc}") from exc


def _check_top_level(raw: dict[str, Any]) -> list[str]:
    errors = []
    for key, value in raw.items():
        if key not in ("node", "deploy"):
            errors.append(_unknown(key, ("node", "deploy"), "a table"))
        elif not isinstance(value, dict):
            errors.append(f"{key}: expected a table, got {type(value).__name__}")
    return errors


def _from_environment(environ: Mapping[str, str] | None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    found = {}
    for key in SETTING_NAMES:
        value = env.get(env_name(key), "")
        if value != "":
            found[key] = value
    return found


def _typed(
    raw: Mapping[str, Any], *, prefix: str, strict: bool
) -> tuple[dict[str, Any], list[str]]:
    """Each value converted to its key's type; errors collected, not raised (one per key)."""
    values: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in raw.items():
        where = _where(prefix, key)
        if key not in _FIELD_TYPES:
            errors.append(_unknown(where, SETTING_NAMES, "a node setting", key=key))
            continue
        if key == "labels" and isinstance(value, str):  # FLEETINFER_LABELS=arch=arm64,label.x=y
            value = dict(item.partition("=")[::2] for item in value.split(",") if item)
        try:
            values[key] = msgspec.convert(value, type=_FIELD_TYPES[key], strict=strict)
        except msgspec.ValidationError as exc:
            errors.append(f"{where}: {_expected(_FIELD_TYPES[key], exc)} (got {value!r})")
            continue
        problem = _value_problem(key, values[key])
        if problem is not None:
            errors.append(f"{where}: {problem} (got {value!r})")
    return values, errors


def _expected(kind: Any, exc: msgspec.ValidationError) -> str:
    if get_origin(kind) is Literal:
        return "expected one of " + ", ".join(str(v) for v in get_args(kind))
    return str(exc).replace("`", "")


def namespace_problem(namespace: str) -> str | None:
    """What is wrong with a CloudWatch namespace (None: nothing); "" is allowed: no publishing."""
    if namespace == "":
        return None
    if not CLOUDWATCH_NAMESPACE.match(namespace) or namespace.isspace():
        return "expected a CloudWatch namespace: 1 to 255 of letters, digits, space and . - _ / # :"
    if namespace.startswith(("AWS/", ":")):
        return "a CloudWatch namespace must not start with AWS/ (kept for AWS) or a colon"
    return None


def _region_problem(region: str) -> str | None:
    if AWS_REGION.match(region):
        return None
    return "expected an AWS region name such as us-east-1 or eu-central-2"


def _endpoint_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname:
        return None
    return "expected an http(s) URL such as https://monitoring.us-east-1.amazonaws.com"


_VALUE_CHECKS: dict[str, Callable[[str], str | None]] = {
    "cloudwatch_namespace": namespace_problem,
    "cloudwatch_region": _region_problem,
    "cloudwatch_endpoint_url": _endpoint_problem,
}


def _value_problem(key: str, value: Any) -> str | None:
    """What a value of the right type still gets wrong (a CloudWatch namespace's characters)."""
    check = _VALUE_CHECKS.get(key)
    return None if check is None or value is None else check(value)


def _where(prefix: str, key: str) -> str:
    """How the user wrote `key`: node.grace_s, FLEETINFER_GRACE_S, --grace-s, the argument."""
    if prefix == "$":
        return env_name(key)
    if prefix == "--":
        return "the TARGET argument" if key == "target" else "--" + key.replace("_", "-")
    return prefix + key


def _cross_checks(values: Mapping[str, Any]) -> list[str]:
    errors = []
    for key in SECRET_URL_KEYS:
        if values.get(f"{key}_password_file") and values.get(f"{key}_password_env"):
            errors.append(
                f"node.{key}_password_file and node.{key}_password_env: give one of the two"
            )
    base = values.get("restart_backoff_s", 0.5)
    if base > values.get("restart_backoff_max_s", 30.0):
        errors.append("node.restart_backoff_s: must not exceed node.restart_backoff_max_s")
    return errors


def _unknown(where: str, valid: tuple[str, ...], what: str, *, key: str | None = None) -> str:
    close = difflib.get_close_matches(key or where, valid, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"expected one of {', '.join(valid)}"
    return f"{where}: unknown key, not {what}: {hint}"


def _report(errors: list[str]) -> str:
    if len(errors) == 1:
        return f"invalid configuration: {errors[0]}"
    return f"invalid configuration ({len(errors)} errors): " + "; ".join(errors)


# -- secrets -----------------------------------------------------------------------------------


def _read_secret(key: str, file: str | None, env: str | None) -> str | None:
    if file is not None:
        try:
            return Path(file).read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise ConfigError(
                f"node.{key}_password_file {file!r} cannot be read ({reason}): make it a "
                "readable file holding only the password"
            ) from exc
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(
                f"node.{key}_password_env names ${env}, which is not set or empty: export it, "
                f"or remove node.{key}_password_env"
            )
        return value
    return None


def with_password(url: str, password: str) -> str:
    """`url` with `password` in its user-info (`scheme://user:password@host/...`)."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ConfigError(
            f"cannot put a password into {mask_url(url)!r}: the URL names no host "
            "(expected scheme://user@host/...)"
        )
    user = quote(parts.username or "", safe="")
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def mask_url(url: str) -> str:
    """`url` with the password of its user-info shown as ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}:{MASK}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# -- to the agent ------------------------------------------------------------------------------


def node_config(settings: NodeSettings) -> NodeConfig:
    """The `NodeConfig` the agent runs: URLs with their secrets, flags' units and sentinels."""
    from fleetinfer.node.agent import NodeConfig
    from fleetinfer.node.supervisor import RestartPolicy

    if settings.target is None:
        raise ConfigError(
            "no task target: give APP:TASK to `fleetinfer run`, or set node.target in "
            f"{CONFIG_FILE} (or {env_name('target')})"
        )
    urls = settings.urls()
    return NodeConfig(
        target=settings.target,
        queue_url=urls["queue"],
        results_url=urls["results"],
        models=None if settings.models is None else Path(settings.models),
        client_mode=settings.client,
        triton_url=settings.triton_url,
        workers=settings.workers,
        grace_s=settings.grace_s,
        metrics_host=settings.metrics_host,
        metrics_port=None if settings.metrics_port < 0 else settings.metrics_port,
        spot_endpoint=settings.spot_endpoint,
        spot_interval_s=settings.spot_interval_s,
        exit_when_empty=settings.exit_when_empty,
        allow_dead_letters=settings.allow_dead_letters,
        max_message_bytes=settings.max_message_bytes,
        restart=RestartPolicy(
            base_s=settings.restart_backoff_s, max_s=settings.restart_backoff_max_s
        ),
        verbose=settings.verbose,
        preload_workers=settings.preload,
        worker_nice=settings.worker_nice,
        log_format=settings.log_format,
        model_deadlines=settings.model_deadline_s,
        server_probe_interval_s=settings.server_probe_interval_s,
        server_probe_timeout_s=settings.server_probe_timeout_s,
        server_probe_failures=settings.server_probe_failures,
        server_instance_count=settings.server_instances,
        server_intra_op_threads=settings.server_threads,
        labels=dict(settings.labels),
        devices=settings.devices,
        device_kind=settings.device_kind,
        progress=settings.log_format == "text",  # JSON logs are for machines: no live line
        registry=_node_registry(settings),
        cloudwatch=_cloudwatch(settings),
    )


def _cloudwatch(settings: NodeSettings) -> CloudWatchOptions | None:
    if not settings.cloudwatch_namespace:
        return None
    from fleetinfer.node.cloudwatch import CloudWatchOptions

    return CloudWatchOptions(
        namespace=settings.cloudwatch_namespace,
        region=settings.cloudwatch_region,
        endpoint_url=settings.cloudwatch_endpoint_url,
        interval_s=settings.cloudwatch_interval_s,
    )


def _node_registry(settings: NodeSettings) -> NodeRegistry | None:
    if settings.registry is None:
        return None
    from fleetinfer.registry.node import NodeRegistry, parse_pairs

    named = {} if settings.node_name is None else {"node": settings.node_name}
    free = {
        k.removeprefix("label."): v for k, v in settings.labels.items() if k.startswith("label.")
    }
    fixed = {k: v for k, v in settings.labels.items() if not k.startswith("label.")}
    return NodeRegistry(
        url=settings.registry,
        labels=free,  # `label.group = "a"` is matched by the selector `group=a`
        overrides={**fixed, **parse_pairs(settings.attributes, "node.attributes")},
        interval_s=settings.registry_interval_s,
        **named,
    )
