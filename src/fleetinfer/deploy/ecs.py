"""Amazon ECS definitions of a deployment, as the JSON of the API requests that create them.

    capacity-providers.json   CreateCapacityProvider × architecture (spot Auto Scaling groups)
                              and PutClusterCapacityProviders (the default strategy)
    task-definition.json      RegisterTaskDefinition: one container per device (one model server
                              per device) or one for CPU; settings as FLEETINFER_* variables,
                              passwords from Secrets Manager, /dev/shm sized from the model; for
                              a Redis queue the node publishes the backlog the scaling reads
    service.json              CreateService: the capacity provider strategy, placement by
                              `attribute:ecs.cpu-architecture` and instance type
    scaling.json              RegisterScalableTarget, PutScalingPolicy (target tracking on the
                              backlog per task), PutMetricAlarm (the fleet at its ceiling)

The backlog per task is metric math: queued + in flight (for an SQS queue SQS's own
`ApproximateNumberOfMessagesVisible` + `…NotVisible`; for Redis `QueueBacklog`, namespace
`deploy.ecs.metric_namespace`, dimension `Queue`: what each node publishes itself, visible + in
flight + delayed, `fleetinfer.node.cloudwatch`; the task's environment turns that on), divided by
the service's `RunningTaskCount` (Container Insights). Its target is the backlog policy's.
"""

from __future__ import annotations

import math
from typing import Any

from fleetinfer.config import env_name
from fleetinfer.deploy.settings import Deployment
from fleetinfer.errors import ConfigError
from fleetinfer.node.cloudwatch import BACKLOG_METRIC, QUEUE_DIMENSION
from fleetinfer.plan.policy import BacklogPolicy

ECS_ARCH = {"amd64": "x86_64", "arm64": "arm64"}
SECRET_VARIABLES = {"queue": "FLEETINFER_QUEUE_PASSWORD", "results": "FLEETINFER_RESULTS_PASSWORD"}
CEILING_ALARM_MINUTES = 15


def render(d: Deployment) -> dict[str, Any]:
    _check_publishing(d)
    return {
        "capacity-providers.json": capacity_providers(d),
        "task-definition.json": task_definition(d),
        "service.json": service(d),
        "scaling.json": scaling(d),
    }


def _provider(d: Deployment, arch: str) -> str:
    return f"{d.deploy.name}-spot-{arch}"


def capacity_providers(d: Deployment) -> dict[str, Any]:
    providers = []
    for arch in d.architectures:
        group = d.deploy.ecs.spot_auto_scaling_groups.get(arch, f"<spot ASG ARN, {arch}>")  # type: ignore[call-overload]
        providers.append({
            "name": _provider(d, arch),
            "autoScalingGroupProvider": {
                "autoScalingGroupArn": group,
                "managedScaling": {"status": "ENABLED", "targetCapacity": 100,
                                   "minimumScalingStepSize": 1, "maximumScalingStepSize": 10},
                "managedTerminationProtection": "DISABLED",
                "managedDraining": "ENABLED",
            },
        })  # fmt: skip
    return {
        "createCapacityProvider": providers,
        "putClusterCapacityProviders": {
            "cluster": d.deploy.ecs.cluster,
            "capacityProviders": [p["name"] for p in providers],
            "defaultCapacityProviderStrategy": _strategy(d),
        },
    }


def _strategy(d: Deployment) -> list[dict[str, Any]]:
    return [{"capacityProvider": _provider(d, arch), "weight": 1, "base": 0}
            for arch in d.architectures]  # fmt: skip


def _containers_per_task(d: Deployment) -> int:
    return d.deploy.devices_per_node if d.deploy.accelerator != "none" else 1


def task_definition(d: Deployment) -> dict[str, Any]:
    count = _containers_per_task(d)
    containers = [_container(d, index, count) for index in range(count)]
    request: dict[str, Any] = {
        "family": d.deploy.name,
        "networkMode": "bridge",
        "requiresCompatibilities": ["EC2"],
        "containerDefinitions": containers,
        "placementConstraints": [{"type": "memberOf", "expression": _placement(d)}],
    }
    if d.deploy.ecs.execution_role_arn:
        request["executionRoleArn"] = d.deploy.ecs.execution_role_arn
    if d.deploy.ecs.task_role_arn:
        request["taskRoleArn"] = d.deploy.ecs.task_role_arn
    return request


def _container(d: Deployment, index: int, count: int) -> dict[str, Any]:
    name = "node" if count == 1 else f"node-{index}"
    port = d.metrics_port + index
    container: dict[str, Any] = {
        "name": name,
        "image": d.deploy.image,
        "essential": True,
        "command": ["fleetinfer", "run"],
        "cpu": math.ceil(d.cpu_millis * 1024 / 1000),
        "memoryReservation": d.memory_mib,
        "memory": d.memory_mib + d.shm_mib,
        "portMappings": [{"containerPort": port, "hostPort": port, "protocol": "tcp"}],
        "environment": _environment(d, port),
        "healthCheck": _health_check(d, port),
        "stopTimeout": min(120, d.termination_grace_s),
        "linuxParameters": _linux_parameters(d, index),
        "logConfiguration": {"logDriver": "awslogs", "options": {
            "awslogs-group": d.deploy.ecs.log_group, "awslogs-region": d.deploy.region,
            "awslogs-stream-prefix": name, "awslogs-create-group": "true"}},
        "user": "10001:10001",
    }  # fmt: skip
    secrets = _secrets(d)
    if secrets:
        container["secrets"] = secrets
    if d.deploy.accelerator == "gpu":  # ECS gives each such container its own GPU
        container["resourceRequirements"] = [{"type": "GPU", "value": "1"}]
    return container


def _environment(d: Deployment, port: int) -> list[dict[str, str]]:
    """Every [node] key as written, as FLEETINFER_*; password files become variables; for a
    Redis queue, the CloudWatch publisher of the metric the scaling policy reads."""
    values = {k: v for k, v in d.node_table.items() if not k.endswith("_password_file")}
    values["metrics_port"] = port
    for key in SECRET_VARIABLES:
        if getattr(d.node, f"{key}_password_file") or getattr(d.node, f"{key}_password_env"):
            values[f"{key}_password_env"] = SECRET_VARIABLES[key]
    values |= _publishing(d)
    return [{"name": env_name(k), "value": _text(v)} for k, v in sorted(values.items())]


def _publishing(d: Deployment) -> dict[str, Any]:
    """For a Redis queue each node publishes `QueueBacklog` where the scaling policy reads it
    (an SQS queue has SQS's own metrics: nothing, unless [node] asks for it)."""
    if d.queue.kind == "sqs" or "cloudwatch_namespace" in d.node_table:
        return {}
    return {
        "cloudwatch_namespace": d.deploy.ecs.metric_namespace,
        "cloudwatch_region": d.node.cloudwatch_region or d.deploy.region,
    }


def _check_publishing(d: Deployment) -> None:
    """A [node] namespace of its own for a Redis queue would leave the scaling policy no data."""
    namespace = d.node.cloudwatch_namespace
    if d.queue.kind == "sqs" or not namespace or namespace == d.deploy.ecs.metric_namespace:
        return
    raise ConfigError(
        f"node.cloudwatch_namespace {namespace!r} is not deploy.ecs.metric_namespace "
        f"{d.deploy.ecs.metric_namespace!r}, where the ECS scaling policy reads QueueBacklog: "
        "make them the same, or remove node.cloudwatch_namespace"
    )


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _secrets(d: Deployment) -> list[dict[str, str]]:
    found = []
    for key, variable in SECRET_VARIABLES.items():
        if getattr(d.node, f"{key}_password_file") or getattr(d.node, f"{key}_password_env"):
            arn = d.deploy.ecs.secret_arns.get(key, f"<Secrets Manager ARN, {key} password>")  # type: ignore[call-overload]
            found.append({"name": variable, "valueFrom": arn})
    return found


def _health_check(d: Deployment, port: int) -> dict[str, Any]:
    first_task_s = d.profile.mode(d.deploy.mode).first_task_s
    probe = f"import urllib.request as u; u.urlopen('http://127.0.0.1:{port}/healthz', timeout=4)"
    return {"command": ["CMD", "python3", "-c", probe], "interval": 10, "timeout": 5, "retries": 12,
            "startPeriod": min(300, max(60, math.ceil(2 * first_task_s)))}  # fmt: skip


def _linux_parameters(d: Deployment, index: int) -> dict[str, Any]:
    parameters: dict[str, Any] = {"sharedMemorySize": d.shm_mib, "initProcessEnabled": True}
    if d.deploy.accelerator == "neuron":
        device = f"/dev/neuron{index}"
        parameters["devices"] = [{"hostPath": device, "containerPath": device,
                                  "permissions": ["read", "write"]}]  # fmt: skip
    return parameters


def _placement(d: Deployment) -> str:
    arches = ", ".join(ECS_ARCH[a] for a in d.architectures)
    families = " or ".join(f"attribute:ecs.instance-type =~ {f}.*" for f in d.families)
    return f"attribute:ecs.cpu-architecture in [{arches}] and ({families})"


def service(d: Deployment) -> dict[str, Any]:
    return {
        "cluster": d.deploy.ecs.cluster,
        "serviceName": d.deploy.name,
        "taskDefinition": d.deploy.name,
        "desiredCount": d.policy.floor_nodes,
        "capacityProviderStrategy": _strategy(d),
        "placementConstraints": [{"type": "memberOf", "expression": _placement(d)}],
        "placementStrategy": [{"type": "binpack", "field": "memory"}],
        "deploymentConfiguration": {"maximumPercent": 200, "minimumHealthyPercent": 100},
    }


def scaling(d: Deployment) -> dict[str, Any]:
    resource = f"service/{d.deploy.ecs.cluster}/{d.deploy.name}"
    return {
        "registerScalableTarget": {
            "ServiceNamespace": "ecs",
            "ResourceId": resource,
            "ScalableDimension": "ecs:service:DesiredCount",
            "MinCapacity": d.policy.floor_nodes,
            "MaxCapacity": d.policy.ceiling_nodes,
        },
        "putScalingPolicy": _target_tracking(d, resource),
        "putMetricAlarm": _ceiling_alarm(d),
    }


def _target_tracking(d: Deployment, resource: str) -> dict[str, Any]:
    return {
        "PolicyName": f"{d.deploy.name}-backlog-per-task",
        "ServiceNamespace": "ecs",
        "ResourceId": resource,
        "ScalableDimension": "ecs:service:DesiredCount",
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": _target_per_task(d.policy, _containers_per_task(d)),
            "CustomizedMetricSpecification": {"Metrics": _backlog_per_task(d)},
            "ScaleOutCooldown": 60,
            "ScaleInCooldown": 300,
        },
    }


def _target_per_task(policy: BacklogPolicy, nodes_per_task: int) -> float:
    return float(math.ceil(policy.target_in_flight_per_node) * nodes_per_task)


def _backlog_per_task(d: Deployment) -> list[dict[str, Any]]:
    """Queued + in flight, divided by the running tasks: SQS's own metrics for an SQS queue,
    else `QueueBacklog`, the custom metric each node publishes (`fleetinfer.node.cloudwatch`)."""
    tasks = {"Namespace": "ECS/ContainerInsights", "MetricName": "RunningTaskCount",
             "Dimensions": [{"Name": "ClusterName", "Value": d.deploy.ecs.cluster},
                            {"Name": "ServiceName", "Value": d.deploy.name}]}  # fmt: skip
    metrics = [_stat(m, metric, stat) for m, metric, stat in _backlog_metrics(d)]
    backlog = " + ".join(m["Id"] for m in metrics)
    return [
        *metrics,
        _stat("tasks", tasks, "Average"),
        {"Id": "per_task", "Expression": f"({backlog}) / tasks",
         "Label": "queued + in flight per task", "ReturnData": True},
    ]  # fmt: skip


def _backlog_metrics(d: Deployment) -> list[tuple[str, dict[str, Any], str]]:
    if d.queue.kind == "sqs":
        sqs = [{"Name": "QueueName", "Value": d.queue.name}]
        return [
            ("visible", {"Namespace": "AWS/SQS", "MetricName": "ApproximateNumberOfMessagesVisible",
                         "Dimensions": sqs}, "Maximum"),
            ("in_flight", {"Namespace": "AWS/SQS",
                           "MetricName": "ApproximateNumberOfMessagesNotVisible",
                           "Dimensions": sqs}, "Maximum"),
        ]  # fmt: skip
    return [("backlog", _backlog_metric(d), "Maximum")]


def _backlog_metric(d: Deployment) -> dict[str, Any]:
    return {"Namespace": d.deploy.ecs.metric_namespace, "MetricName": BACKLOG_METRIC,
            "Dimensions": [{"Name": QUEUE_DIMENSION, "Value": d.queue.name}]}  # fmt: skip


def _stat(
    metric_id: str, metric: dict[str, Any], stat: str, *, period_s: int | None = None
) -> dict[str, Any]:
    """A metric of a metric-math query (an alarm's needs its period; a policy's has none)."""
    metric_stat: dict[str, Any] = {"Metric": metric, "Stat": stat}
    if period_s is not None:
        metric_stat["Period"] = period_s
    return {"Id": metric_id, "MetricStat": metric_stat, "ReturnData": False}


def _ceiling_alarm(d: Deployment) -> dict[str, Any]:
    """The fleet at its ceiling still has more than a full fleet's backlog: raise the ceiling."""
    full = d.policy.ceiling_nodes * math.ceil(d.policy.target_in_flight_per_node)
    alarm: dict[str, Any] = {
        "AlarmName": f"{d.deploy.name}-backlog-above-ceiling",
        "AlarmDescription": (
            f"{d.deploy.name}: backlog above {full} tasks (deploy.max_nodes "
            f"{d.policy.ceiling_nodes} × {math.ceil(d.policy.target_in_flight_per_node)} per "
            f"node) for {CEILING_ALARM_MINUTES} min: raise deploy.max_nodes"
        ),
        "EvaluationPeriods": CEILING_ALARM_MINUTES,
        "Threshold": float(full),
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "notBreaching",
    }
    if d.queue.kind == "sqs":
        metrics = [
            _stat(m, metric, stat) | {"Period": 60} for m, metric, stat in _backlog_metrics(d)
        ]
        for entry in metrics:
            entry["MetricStat"]["Period"] = entry.pop("Period")
        total = {"Id": "backlog", "Expression": "visible + in_flight", "ReturnData": True}
        return alarm | {"Metrics": [*metrics, total]}
    return alarm | _backlog_metric(d) | {"Statistic": "Maximum", "Period": 60}
