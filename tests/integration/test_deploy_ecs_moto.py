"""The rendered ECS requests, sent to a moto server (ecs, application-autoscaling, cloudwatch)
and read back: what moto accepts and stores is what the files say; and the backlog metric the
stored scaling policy reads is the one a node configured by the task definition publishes."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from prometheus_client import CollectorRegistry

from fleetinfer.config import load_settings, node_config
from fleetinfer.deploy import load_deployment, render_files
from fleetinfer.node.cloudwatch import CloudWatchPublisher, open_cloudwatch
from fleetinfer.node.queue_metrics import QueueCollector
from fleetinfer.queue import open_broker
from fleetinfer.queue.placed import PlacedBroker

ROOT = Path(__file__).resolve().parents[2]


def _rendered(tmp_path: Path, name: str, *, queue: str | None = None) -> dict[str, Any]:
    """The example's ECS files with its service, family and cluster named `name`."""
    text = (ROOT / "deploy" / "fleetinfer.toml").read_text("utf-8")
    text = text.replace('name = "fleetinfer"\n', f'name = "{name}"\n')
    text = text.replace('cluster = "fleetinfer"', f'cluster = "{name}"')
    if queue is not None:
        text = text.replace("redis://queue.internal:6379/0?queue=segments", queue)
    config = tmp_path / "fleetinfer.toml"
    config.write_text(text.replace("../examples/", f"{ROOT}/examples/"), "utf-8")
    files = render_files("ecs", load_deployment(config))
    return {file: json.loads(body) for file, body in files.items()}


def test_rendered_ecs_definitions_register_in_moto_and_read_back(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    files = _rendered(tmp_path, unique_name)  # cluster, service, family, providers: this test's
    ecs = boto3.client("ecs", endpoint_url=moto_endpoint, region_name="us-east-1")
    ecs.create_cluster(clusterName=unique_name)
    providers = files["capacity-providers.json"]
    for request in providers["createCapacityProvider"]:
        ecs.create_capacity_provider(**request)
    cluster_request = providers["putClusterCapacityProviders"]
    cluster = ecs.put_cluster_capacity_providers(**cluster_request)["cluster"]
    assert cluster["capacityProviders"] == cluster_request["capacityProviders"]
    assert (
        cluster["defaultCapacityProviderStrategy"]
        == cluster_request["defaultCapacityProviderStrategy"]
    )
    described = ecs.describe_capacity_providers(capacityProviders=cluster["capacityProviders"])
    groups = [
        p["autoScalingGroupProvider"]["autoScalingGroupArn"] for p in described["capacityProviders"]
    ]
    assert [g.rsplit("/", 1)[1] for g in groups] == [
        "fleetinfer-spot-amd64",
        "fleetinfer-spot-arm64",
    ]

    task = files["task-definition.json"]
    ecs.register_task_definition(**task)
    back = ecs.describe_task_definition(taskDefinition=unique_name)["taskDefinition"]
    container, sent = back["containerDefinitions"][0], task["containerDefinitions"][0]
    for key in ("image", "command", "cpu", "memory", "memoryReservation", "environment",
                "secrets", "linuxParameters", "healthCheck", "portMappings"):  # fmt: skip
        assert container[key] == sent[key], key
    assert back["placementConstraints"] == task["placementConstraints"]
    assert (
        back["taskRoleArn"]
        == task["taskRoleArn"]
        == "arn:aws:iam::123456789012:role/fleetinfer-node"
    )
    assert back["executionRoleArn"] == task["executionRoleArn"]
    assert (
        "attribute:ecs.cpu-architecture in [x86_64, arm64]"
        in back["placementConstraints"][0]["expression"]
    )

    service = files["service.json"]
    created = ecs.create_service(**service)["service"]
    assert (created["serviceName"], created["desiredCount"]) == (unique_name, 1)
    assert created["taskDefinition"].endswith(f"task-definition/{unique_name}:1")

    scaling = files["scaling.json"]
    autoscaling = boto3.client(
        "application-autoscaling", endpoint_url=moto_endpoint, region_name="us-east-1"
    )
    autoscaling.register_scalable_target(**scaling["registerScalableTarget"])
    target = autoscaling.describe_scalable_targets(
        ServiceNamespace="ecs", ResourceIds=[scaling["registerScalableTarget"]["ResourceId"]]
    )["ScalableTargets"][0]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 200)
    autoscaling.put_scaling_policy(**scaling["putScalingPolicy"])
    policy = autoscaling.describe_scaling_policies(
        ServiceNamespace="ecs", ResourceId=scaling["registerScalableTarget"]["ResourceId"]
    )["ScalingPolicies"][0]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 32.0  # the backlog policy's target: 32 workers per node
    assert tracking == scaling["putScalingPolicy"]["TargetTrackingScalingPolicyConfiguration"]

    cloudwatch = boto3.client("cloudwatch", endpoint_url=moto_endpoint, region_name="us-east-1")
    alarm_request = scaling["putMetricAlarm"]
    cloudwatch.put_metric_alarm(**alarm_request)
    alarm = cloudwatch.describe_alarms(AlarmNames=[alarm_request["AlarmName"]])["MetricAlarms"][0]
    assert (alarm["MetricName"], alarm["Threshold"]) == ("QueueBacklog", 6400.0)  # 200 nodes x 32


def test_an_sqs_queue_scales_ecs_on_sqs_metrics_registered_in_moto(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    files = _rendered(tmp_path, unique_name, queue=f"sqs://{unique_name}?region=us-east-1")
    scaling = files["scaling.json"]
    metrics = scaling["putScalingPolicy"]["TargetTrackingScalingPolicyConfiguration"][
        "CustomizedMetricSpecification"
    ]["Metrics"]
    names = [m["MetricStat"]["Metric"]["MetricName"] for m in metrics if "MetricStat" in m]
    assert names == [
        "ApproximateNumberOfMessagesVisible", "ApproximateNumberOfMessagesNotVisible",
        "RunningTaskCount",
    ]  # fmt: skip
    policy = _stored_policy(moto_endpoint, files, unique_name)
    sent = scaling["putScalingPolicy"]["TargetTrackingScalingPolicyConfiguration"]
    assert policy["TargetTrackingScalingPolicyConfiguration"] == sent
    cloudwatch = boto3.client("cloudwatch", endpoint_url=moto_endpoint, region_name="us-east-1")
    cloudwatch.put_metric_alarm(**scaling["putMetricAlarm"])
    alarm = cloudwatch.describe_alarms(AlarmNames=[scaling["putMetricAlarm"]["AlarmName"]])
    queries = alarm["MetricAlarms"][0]["Metrics"]
    assert [q["Id"] for q in queries] == ["visible", "in_flight", "backlog"]
    assert queries[2]["Expression"] == "visible + in_flight"


def _stored_policy_metrics(
    moto_endpoint: str, files: dict[str, Any], name: str
) -> list[dict[str, Any]]:
    """The metric-math queries of the target tracking, as application-autoscaling stored them."""
    policy = _stored_policy(moto_endpoint, files, name)
    metrics: list[dict[str, Any]] = policy["TargetTrackingScalingPolicyConfiguration"][
        "CustomizedMetricSpecification"
    ]["Metrics"]
    return metrics


def _stored_policy(moto_endpoint: str, files: dict[str, Any], name: str) -> dict[str, Any]:
    """The rendered cluster, task, service and scaling policy sent to moto; the policy as
    application-autoscaling stored it."""
    ecs = boto3.client("ecs", endpoint_url=moto_endpoint, region_name="us-east-1")
    ecs.create_cluster(clusterName=name)
    ecs.register_task_definition(**files["task-definition.json"])
    ecs.create_service(**files["service.json"])
    autoscaling = boto3.client(
        "application-autoscaling", endpoint_url=moto_endpoint, region_name="us-east-1"
    )
    scaling = files["scaling.json"]
    autoscaling.register_scalable_target(**scaling["registerScalableTarget"])
    autoscaling.put_scaling_policy(**scaling["putScalingPolicy"])
    policy: dict[str, Any] = autoscaling.describe_scaling_policies(
        ServiceNamespace="ecs", ResourceId=scaling["registerScalableTarget"]["ResourceId"]
    )["ScalingPolicies"][0]
    return policy


def test_the_backlog_the_ecs_policy_reads_is_what_a_node_of_the_task_publishes(
    moto_endpoint: str,
    unique_name: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = f"{redis_url}?queue={unique_name}"
    files = _rendered(tmp_path, unique_name, queue=queue)
    # the node as the task starts it (its environment), with moto as CloudWatch
    container = files["task-definition.json"]["containerDefinitions"][0]
    environ = {e["name"]: e["value"] for e in container["environment"]}
    environ["FLEETINFER_CLOUDWATCH_ENDPOINT_URL"] = moto_endpoint
    for secret in container["secrets"]:
        monkeypatch.setenv(secret["name"], "from Secrets Manager")
    options = node_config(load_settings(None, environ=environ, cwd=tmp_path / "empty")).cloudwatch
    assert options is not None
    with open_broker(queue) as broker:  # the node's queue (the test's Redis needs no password)
        try:
            broker.send_batch([1, 2, 3])
            collector = QueueCollector(PlacedBroker(broker, {}))  # what the agent watches
            publisher = CloudWatchPublisher(
                open_cloudwatch(options), collector, options, CollectorRegistry()
            )
            assert publisher.publish()
        finally:
            broker.purge()

    cloudwatch = boto3.client("cloudwatch", endpoint_url=moto_endpoint, region_name="us-east-1")
    queries = _stored_policy_metrics(moto_endpoint, files, unique_name)
    read = [q["MetricStat"]["Metric"] for q in queries if "MetricStat" in q]
    [backlog] = [m for m in read if m["Namespace"] != "ECS/ContainerInsights"]
    published = cloudwatch.list_metrics(
        Namespace=backlog["Namespace"], MetricName=backlog["MetricName"]
    )["Metrics"]
    assert {"Namespace": backlog["Namespace"], "MetricName": backlog["MetricName"],
            "Dimensions": backlog["Dimensions"]} in published  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    [point] = cloudwatch.get_metric_statistics(
        **{k: backlog[k] for k in ("Namespace", "MetricName", "Dimensions")},
        StartTime=now - datetime.timedelta(minutes=10), EndTime=now + datetime.timedelta(minutes=1),
        Period=60, Statistics=["Maximum"],  # what the policy's MetricStat asks for
    )["Datapoints"]  # fmt: skip
    assert point["Maximum"] == 3.0
    stat = next(q["MetricStat"]["Stat"] for q in queries if q.get("Id") == "backlog")
    assert stat == "Maximum"
    alarm = files["scaling.json"]["putMetricAlarm"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Dimensions"]) == (
        backlog["Namespace"], backlog["MetricName"], backlog["Dimensions"]
    )  # fmt: skip
