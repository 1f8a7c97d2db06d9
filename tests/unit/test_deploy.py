"""`fleetinfer deploy render`: the committed examples, validation of every object it writes
(kubernetes-validate --strict; KEDA and Karpenter against tests/schemas/), and bad input."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from fleetinfer.cli.app import app
from fleetinfer.config import load_settings, node_config
from fleetinfer.deploy import load_deployment, render_files
from fleetinfer.deploy.ecs import task_definition
from fleetinfer.deploy.kubernetes import render as render_kubernetes
from fleetinfer.deploy.text import to_yaml
from fleetinfer.errors import ConfigError
from fleetinfer.node.cloudwatch import BACKLOG_METRIC

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "fleetinfer.toml"
SCHEMAS = ROOT / "tests" / "schemas"
CORE_FILES = ("namespace.yaml", "configmap.yaml", "deployment.yaml", "poddisruptionbudget.yaml")
CRD_SCHEMAS = {
    "scaledobject.yaml": "keda-scaledobject",
    "triggerauthentication.yaml": "keda-triggerauthentication",
    "nodepool.yaml": "karpenter-nodepool",
}


def _example_text() -> str:
    return EXAMPLE.read_text("utf-8")


def _config(tmp_path: Path, text: str) -> Path:
    """The example configuration with `text` changes, beside a copy of its profile."""
    profile = ROOT / "examples" / "plan" / "production.profile.json"
    (tmp_path / "node.profile.json").write_text(profile.read_text("utf-8"), "utf-8")
    path = tmp_path / "fleetinfer.toml"
    path.write_text(text.replace("../examples/plan/production.profile.json", "node.profile.json"))
    return path


def _schema(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    )


@pytest.fixture(scope="module")
def example_objects() -> dict[str, Any]:
    return render_kubernetes(load_deployment(EXAMPLE))


@pytest.mark.parametrize("target", ["kubernetes", "ecs"])
def test_committed_examples_are_what_render_writes_now(target: str) -> None:
    files = render_files(target, load_deployment(EXAMPLE))
    folder = ROOT / "deploy" / target
    assert sorted(p.name for p in folder.iterdir()) == sorted(files), (
        f"deploy/{target}/ holds other files than the render: run "
        f"`fleetinfer deploy render {target} --config deploy/fleetinfer.toml --out deploy/{target}`"
    )
    for name, text in files.items():
        assert (folder / name).read_text("utf-8") == text, f"deploy/{target}/{name} is stale"


def test_rendered_yaml_reads_back_as_the_objects(example_objects: dict[str, Any]) -> None:
    for name, obj in example_objects.items():
        assert yaml.safe_load((ROOT / "deploy" / "kubernetes" / name).read_text()) == obj


def test_yaml_writer_quotes_what_yaml_would_read_as_another_type() -> None:
    value = {"a": ["true", "no", "1", "0.5", "null", "x: y", "#c", "", "ok"], "b": {"c": 1}}
    value["t"] = "line one\nline two\n"  # type: ignore[assignment]
    assert yaml.safe_load(to_yaml(value)) == value


def test_core_objects_pass_kubernetes_validate_strict() -> None:
    files = [str(ROOT / "deploy" / "kubernetes" / name) for name in CORE_FILES]
    done = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(CORE_FILES)


def test_kubernetes_validate_strict_rejects_a_misspelt_deployment_field(
    tmp_path: Path, example_objects: dict[str, Any]
) -> None:
    broken = copy.deepcopy(example_objects["deployment.yaml"])
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 115
    path = tmp_path / "deployment.yaml"
    path.write_text(to_yaml(broken))
    done = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "terminationGracePeriod" in done.stdout + done.stderr


@pytest.mark.parametrize("name", sorted(CRD_SCHEMAS))
def test_keda_and_karpenter_objects_match_their_schemas(
    name: str, example_objects: dict[str, Any]
) -> None:
    _schema(CRD_SCHEMAS[name]).validate(example_objects[name])


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        obj = obj[int(key)] if isinstance(obj, list) else obj[key]
    if isinstance(obj, list):
        obj[int(last)] = value
    else:
        obj[last] = value


@pytest.mark.parametrize(
    ("name", "path", "value"),
    [
        ("scaledobject.yaml", "spec.minReplicas", 1),  # typo of minReplicaCount
        ("scaledobject.yaml", "spec.maxReplicaCount", "200"),  # wrong type
        ("scaledobject.yaml", "spec.triggers.0.metadata.streamLenght", "32"),
        ("scaledobject.yaml", "spec.triggers.0.metadata.streamLength", 32),  # KEDA wants text
        ("triggerauthentication.yaml", "spec.secretTargetRef.0.paramter", "password"),
        ("nodepool.yaml", "spec.template.spec.requirement", []),
        ("nodepool.yaml", "spec.template.spec.requirements.0.values.0", "preemptible"),
        ("nodepool.yaml", "spec.disruption.consolidateAfter", 300),
        ("nodepool.yaml", "spec.template.spec.expireAfter", "30 days"),
        ("nodepool.yaml", "apiVersion", "karpenter.sh/v1beta1"),
    ],
)
def test_a_typo_or_a_wrong_type_fails_its_schema(
    name: str, path: str, value: Any, example_objects: dict[str, Any]
) -> None:
    broken = copy.deepcopy(example_objects[name])
    _set(broken, path, value)
    with pytest.raises(jsonschema.ValidationError):
        _schema(CRD_SCHEMAS[name]).validate(broken)


def test_the_autoscalers_target_is_the_backlog_policys(tmp_path: Path) -> None:
    deployment = load_deployment(EXAMPLE)
    trigger = render_kubernetes(deployment)["scaledobject.yaml"]["spec"]["triggers"][0]
    assert trigger["metadata"]["streamLength"] == "32"  # 32 workers per node in the profile
    assert deployment.policy.target_in_flight_per_node == 32
    sqs = _config(tmp_path, _example_text().replace(
        "redis://queue.internal:6379/0?queue=segments", "sqs://segments?region=eu-west-1"
    ))  # fmt: skip
    trigger = render_kubernetes(load_deployment(sqs))["scaledobject.yaml"]["spec"]["triggers"][0]
    assert trigger["type"] == "aws-sqs-queue"
    assert trigger["metadata"] == {"queueURL": "segments", "awsRegion": "eu-west-1",
                                   "queueLength": "32", "scaleOnInFlight": "true"}  # fmt: skip
    _schema("keda-scaledobject").validate(
        render_kubernetes(load_deployment(sqs))["scaledobject.yaml"]
    )


def test_pod_is_sized_from_the_profile_and_drains_inside_the_spot_notice(
    example_objects: dict[str, Any],
) -> None:
    pod = example_objects["deployment.yaml"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # production profile, shared mode: 8704 MiB model server + 32 workers x 2560 MiB
    assert container["resources"]["requests"] == {"cpu": "32000m", "memory": "90624Mi"}
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8704Mi"}
    assert 100 < pod["terminationGracePeriodSeconds"] <= 120  # drain grace 100 s, notice 120 s


def test_configmap_and_ecs_environment_give_the_node_the_same_settings(
    tmp_path: Path, example_objects: dict[str, Any]
) -> None:
    original = load_settings(EXAMPLE, environ={})
    toml = example_objects["configmap.yaml"]["data"]["fleetinfer.toml"]
    (tmp_path / "fleetinfer.toml").write_text(toml)
    assert load_settings(tmp_path / "fleetinfer.toml", environ={}) == original
    container = task_definition(load_deployment(EXAMPLE))["containerDefinitions"][0]
    environ = {e["name"]: e["value"] for e in container["environment"]}
    environ.update({s["name"]: "secret" for s in container["secrets"]})
    from_env = load_settings(None, environ=environ, cwd=tmp_path / "empty")
    assert from_env.queue == original.queue
    assert from_env.workers == original.workers
    assert from_env.metrics_port == original.metrics_port
    assert from_env.queue_password_env == "FLEETINFER_QUEUE_PASSWORD"


def _environment(config: Path) -> dict[str, str]:
    container = task_definition(load_deployment(config))["containerDefinitions"][0]
    return {e["name"]: e["value"] for e in container["environment"]}


def _policy_metrics(config: Path) -> list[dict[str, Any]]:
    scaling = render_files("ecs", load_deployment(config))["scaling.json"]
    queries = json.loads(scaling)["putScalingPolicy"]["TargetTrackingScalingPolicyConfiguration"]
    return [
        q["MetricStat"]["Metric"]
        for q in queries["CustomizedMetricSpecification"]["Metrics"]
        if "MetricStat" in q
    ]


def test_an_ecs_node_on_redis_publishes_the_backlog_its_scaling_policy_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _example_text().replace('region = "us-east-1"', 'region = "eu-west-1"')
    text = text.replace(
        'cluster = "fleetinfer"', 'cluster = "fleetinfer"\nmetric_namespace = "Fleet/x"'
    )
    config = _config(tmp_path, text)
    environ = _environment(config)
    assert environ["FLEETINFER_CLOUDWATCH_NAMESPACE"] == "Fleet/x"
    assert environ["FLEETINFER_CLOUDWATCH_REGION"] == "eu-west-1"
    for secret in ("FLEETINFER_QUEUE_PASSWORD", "FLEETINFER_RESULTS_PASSWORD"):
        monkeypatch.setenv(secret, "from Secrets Manager")
    settings = load_settings(None, environ=environ, cwd=tmp_path / "empty")  # as the task runs
    publishing = node_config(settings).cloudwatch
    assert publishing is not None
    [backlog] = [m for m in _policy_metrics(config) if m["MetricName"] == BACKLOG_METRIC]
    assert backlog["Namespace"] == publishing.namespace
    assert backlog["Dimensions"] == [{"Name": "Queue", "Value": "segments"}]


def test_an_ecs_node_on_sqs_publishes_nothing_unless_its_node_table_asks(tmp_path: Path) -> None:
    sqs = _example_text().replace(
        "redis://queue.internal:6379/0?queue=segments", "sqs://segments?region=us-east-1"
    )
    assert not [k for k in _environment(_config(tmp_path, sqs)) if "CLOUDWATCH" in k]
    assert {m["Namespace"] for m in _policy_metrics(_config(tmp_path, sqs))} == {
        "AWS/SQS", "ECS/ContainerInsights"
    }  # fmt: skip
    asked = sqs.replace('log_format = "json"', 'log_format = "json"\ncloudwatch_namespace = "Mine"')
    environ = _environment(_config(tmp_path, asked))
    assert environ["FLEETINFER_CLOUDWATCH_NAMESPACE"] == "Mine"
    assert "FLEETINFER_CLOUDWATCH_REGION" not in environ  # boto3's own chain, as written


def test_a_node_namespace_the_ecs_policy_does_not_read_is_refused(tmp_path: Path) -> None:
    text = _example_text().replace(
        'log_format = "json"', 'log_format = "json"\ncloudwatch_namespace = "Other"'
    )
    with pytest.raises(ConfigError, match=r"node\.cloudwatch_namespace 'Other' is not deploy\.ecs"):
        render_files("ecs", load_deployment(_config(tmp_path, text)))
    render_files("kubernetes", load_deployment(_config(tmp_path, text)))  # KEDA reads Redis
    off = _example_text().replace(
        'log_format = "json"', 'log_format = "json"\ncloudwatch_namespace = ""'
    )  # the user publishes QueueBacklog another way
    assert "FLEETINFER_CLOUDWATCH_REGION" not in _environment(_config(tmp_path, off))


def test_a_metric_namespace_cloudwatch_would_refuse_names_its_key(tmp_path: Path) -> None:
    text = _example_text().replace(
        'cluster = "fleetinfer"', 'cluster = "fleetinfer"\nmetric_namespace = "AWS/Fleet"'
    )
    message = _error(tmp_path, text)
    assert "deploy.ecs.metric_namespace: a CloudWatch namespace must not start with AWS/" in message


def test_accelerators_get_one_model_server_per_device(tmp_path: Path) -> None:
    neuron = _config(tmp_path, _example_text().replace(
        'instance_families = ["m7i", "m7a", "m7g", "m8g", "r7i", "r7g"]',
        'instance_families = ["inf2"]\naccelerator = "neuron"\ndevices_per_node = 2\n'
        'architectures = ["amd64"]',
    ).replace("[node]", "[node]\nworkers = 2"))  # fmt: skip
    task = task_definition(load_deployment(neuron))
    devices = [c["linuxParameters"]["devices"][0]["hostPath"] for c in task["containerDefinitions"]]
    assert devices == ["/dev/neuron0", "/dev/neuron1"]
    pod = render_kubernetes(load_deployment(neuron))["deployment.yaml"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["aws.amazon.com/neuron"] == "1"
    gpu = _config(
        tmp_path, neuron.read_text().replace('"inf2"', '"g5"').replace('"neuron"', '"gpu"')
    )
    containers = task_definition(load_deployment(gpu))["containerDefinitions"]
    assert [c["resourceRequirements"] for c in containers] == [[{"type": "GPU", "value": "1"}]] * 2


# -- bad input -----------------------------------------------------------------------------------


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_deployment(_config(tmp_path, text))
    return str(caught.value)


def test_unknown_instance_family_names_its_key(tmp_path: Path) -> None:
    message = _error(tmp_path, _example_text().replace('"m7a"', '"m7x"'))
    assert "deploy.instance_families[1]: unknown instance family 'm7x'" in message
    assert "m7i" in message  # what the catalog has


def test_model_footprint_larger_than_the_nodes_memory_names_its_key(tmp_path: Path) -> None:
    text = _example_text().replace('"m7i", "m7a", "m7g", "m8g", "r7i", "r7g"', '"c7i", "m7g"')
    message = _error(tmp_path, text)
    assert "deploy.instance_families[0]: the node needs 90624 MiB" in message
    assert "'c7i'" in message
    assert "node.workers" in message
    assert "instance_families[1]" not in message  # m7g.8xlarge has 128 GiB


def test_grace_period_longer_than_the_spot_notice_names_its_key(tmp_path: Path) -> None:
    message = _error(tmp_path, _example_text().replace("grace_s = 100", "grace_s = 110"))
    assert "node.grace_s: 110 s of drain" in message
    assert "deploy.spot_notice_s = 120" in message
    assert "at most 105" in message


def test_every_deploy_error_is_reported_at_once_with_its_key_path(tmp_path: Path) -> None:
    text = (
        _example_text()
        .replace("min_nodes = 1", "min_node = 1")
        .replace("max_nodes = 200", 'max_nodes = "many"')
        .replace('name = "fleetinfer"\nimage', 'name = "Fleet Infer"\nimage')
        .replace('namespace = "fleetinfer"', 'namespce = "fleetinfer"')
        .replace(
            "spot_auto_scaling_groups = { amd64", 'spot_auto_scaling_groups = { x86 = "a", amd64'
        )
    )
    message = _error(tmp_path, text)
    assert "(5 errors)" in message
    assert "deploy.min_node: unknown key: did you mean 'min_nodes'?" in message
    assert "deploy.max_nodes: Expected int, got str" in message
    assert "deploy.name:" in message
    assert "deploy.kubernetes.namespce: unknown key: did you mean 'namespace'?" in message
    assert "deploy.ecs.spot_auto_scaling_groups: Invalid enum value 'x86' as a key: " in message
    assert "expected one of amd64, arm64" in message


def test_cross_checks_are_reported_together(tmp_path: Path) -> None:
    text = (
        _example_text()
        .replace("grace_s = 100", "grace_s = 119")
        .replace('"m7i", "m7a", "m7g", "m8g", "r7i", "r7g"', '"c7i", "nope"')
    )
    message = _error(tmp_path, text)
    assert "(3 errors)" in message
    assert "node.grace_s: 119 s of drain" in message
    assert "deploy.instance_families[0]: the node needs 90624 MiB" in message
    assert "deploy.instance_families[1]: unknown instance family 'nope'" in message


def test_a_single_machine_queue_and_an_unreachable_metrics_port_are_refused(
    tmp_path: Path,
) -> None:
    text = _example_text().replace(
        "redis://queue.internal:6379/0?queue=segments", "sqlite:///queue.db"
    ).replace("metrics_port = 9090", "metrics_port = 0")  # fmt: skip
    message = _error(tmp_path, text)
    assert "node.queue: a fleet shares one queue" in message
    assert "node.metrics_port: the probes and the scraper need a fixed port" in message


def test_cli_renders_into_the_folder_and_exits_on_bad_config(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    done = runner.invoke(
        app, ["deploy", "render", "ecs", "--config", str(EXAMPLE), "--out", str(out)]
    )
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in out.iterdir()) == [
        "capacity-providers.json", "scaling.json", "service.json", "task-definition.json"
    ]  # fmt: skip
    bad = _config(tmp_path, _example_text().replace('"m7a"', '"zz9"'))
    done = runner.invoke(
        app, ["deploy", "render", "kubernetes", "--config", str(bad), "--out", str(out)]
    )
    assert done.exit_code != 0
    assert "deploy.instance_families[1]" in done.output
    done = runner.invoke(
        app, ["deploy", "render", "nomad", "--config", str(EXAMPLE), "--out", str(out)]
    )
    assert done.exit_code != 0
    assert "expected one of kubernetes, ecs" in done.output
