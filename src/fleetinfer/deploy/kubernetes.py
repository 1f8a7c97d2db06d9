"""Kubernetes objects of a deployment: plain manifests and a kustomization (no Helm: see
docs/deploy.md), one file per object.

    namespace.yaml           Namespace
    configmap.yaml           fleetinfer.toml ([node] as written), mounted read-only
    deployment.yaml          the node: `fleetinfer run --config …`, /dev/shm sized from the model
                             footprint, requests from the profile, probes on /healthz and /readyz, scrape
                             annotations, secrets as files from a Secret
    poddisruptionbudget.yaml
    triggerauthentication.yaml, scaledobject.yaml   KEDA: the queue's backlog, target per node
                             from the backlog policy (`fleetinfer.plan.policy`)
    nodepool.yaml            Karpenter v1: spot, then on-demand, amd64 and arm64, the families
    kustomization.yaml
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath
from typing import Any

from fleetinfer.deploy.settings import Deployment
from fleetinfer.deploy.text import toml_table
from fleetinfer.plan.policy import hpa_behavior

SECRET_KEYS = {"queue": "queue-password", "results": "results-password"}
DEVICE_RESOURCE = {"gpu": "nvidia.com/gpu", "neuron": "aws.amazon.com/neuron"}
PROBE_PERIOD_S = 10
LIVENESS_WINDOW_S = 120  # a node that answers 503 this long is restarted (drain answers 503 too)


def render(d: Deployment) -> dict[str, dict[str, Any]]:
    """File name -> object, in apply order."""
    objects = {
        "namespace.yaml": namespace(d),
        "configmap.yaml": config_map(d),
        "deployment.yaml": deployment(d),
        "poddisruptionbudget.yaml": pod_disruption_budget(d),
        "triggerauthentication.yaml": trigger_authentication(d),
        "scaledobject.yaml": scaled_object(d),
        "nodepool.yaml": node_pool(d),
    }
    objects["kustomization.yaml"] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",  # no `namespace:`: kustomize would set one on the NodePool too
        "resources": list(objects),
    }
    return objects


def _labels(d: Deployment) -> dict[str, str]:
    return {"app.kubernetes.io/name": d.deploy.name, "app.kubernetes.io/component": "node"}


def _meta(d: Deployment, name: str, *, namespaced: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": _labels(d)}
    if namespaced:
        meta["namespace"] = d.deploy.kubernetes.namespace
    return meta


def namespace(d: Deployment) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": d.deploy.kubernetes.namespace}}  # fmt: skip


def config_map(d: Deployment) -> dict[str, Any]:
    name = PurePosixPath(d.deploy.config_path).name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(d, f"{d.deploy.name}-config"),
        "data": {name: toml_table("node", d.node_table)},
    }


def deployment(d: Deployment) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(d, d.deploy.name),
        "spec": {
            "selector": {"matchLabels": _labels(d)},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": {"metadata": {"labels": _labels(d), "annotations": _scrape(d)},
                         "spec": _pod_spec(d)},
        },
    }  # fmt: skip


def _scrape(d: Deployment) -> dict[str, str]:
    if not d.deploy.kubernetes.prometheus_scrape:
        return {}
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(d.metrics_port),
            "prometheus.io/path": "/metrics"}  # fmt: skip


def _pod_spec(d: Deployment) -> dict[str, Any]:
    return {
        "terminationGracePeriodSeconds": d.termination_grace_s,
        "nodeSelector": {"karpenter.sh/nodepool": d.deploy.name},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                            "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container(d)],
        "volumes": _volumes(d),
    }  # fmt: skip


def _container(d: Deployment) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "node",
        "image": d.deploy.image,
        "command": ["fleetinfer", "run", "--config", d.deploy.config_path],
        "ports": [{"name": "metrics", "containerPort": d.metrics_port, "protocol": "TCP"}],
        "resources": _resources(d),
        "startupProbe": _probe(d, "/healthz", _startup_failures(d)),
        "livenessProbe": _probe(d, "/healthz", LIVENESS_WINDOW_S // PROBE_PERIOD_S),
        "readinessProbe": _probe(d, "/readyz", 1),
        "volumeMounts": _mounts(d),
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }  # fmt: skip
    env = _secret_env(d)
    if env:
        container["env"] = env
    return container


def _startup_failures(d: Deployment) -> int:
    """Room for the model load: twice the profile's first task, at least a minute."""
    first_task_s = d.profile.mode(d.deploy.mode).first_task_s
    return max(6, math.ceil(2 * first_task_s / PROBE_PERIOD_S))


def _probe(d: Deployment, path: str, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "metrics"},
            "periodSeconds": PROBE_PERIOD_S, "failureThreshold": failures}  # fmt: skip


def _resources(d: Deployment) -> dict[str, Any]:
    requests = {"cpu": f"{d.cpu_millis}m", "memory": f"{d.memory_mib}Mi"}
    limits: dict[str, str] = {"memory": f"{d.memory_mib + d.shm_mib}Mi"}
    if d.deploy.accelerator in DEVICE_RESOURCE:  # one model server per device: one per pod
        limits[DEVICE_RESOURCE[d.deploy.accelerator]] = "1"
    return {"requests": requests, "limits": limits}


def _mounts(d: Deployment) -> list[dict[str, Any]]:
    config_dir = str(PurePosixPath(d.deploy.config_path).parent)
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": config_dir, "readOnly": True},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    for index, folder in enumerate(sorted(_secret_files(d))):
        mounts.append({"name": f"secrets-{index}", "mountPath": folder, "readOnly": True})
    return mounts


def _volumes(d: Deployment) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": f"{d.deploy.name}-config"}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{d.shm_mib}Mi"}},
    ]
    for index, (_, files) in enumerate(sorted(_secret_files(d).items())):
        items = [{"key": SECRET_KEYS[key], "path": name} for key, name in files]
        volumes.append({"name": f"secrets-{index}",
                        "secret": {"secretName": d.deploy.kubernetes.secret_name,
                                   "items": items, "defaultMode": 0o440}})  # fmt: skip
    return volumes


def _secret_files(d: Deployment) -> dict[str, list[tuple[str, str]]]:
    """Folder -> (secret, file name) for each `*_password_file` of the node."""
    folders: dict[str, list[tuple[str, str]]] = {}
    for key in SECRET_KEYS:
        path = getattr(d.node, f"{key}_password_file")
        if path is not None:
            where = PurePosixPath(path)
            folders.setdefault(str(where.parent), []).append((key, where.name))
    return folders


def _secret_env(d: Deployment) -> list[dict[str, Any]]:
    env = []
    for key, secret_key in SECRET_KEYS.items():
        variable = getattr(d.node, f"{key}_password_env")
        if variable is not None:
            ref = {"name": d.deploy.kubernetes.secret_name, "key": secret_key}
            env.append({"name": variable, "valueFrom": {"secretKeyRef": ref}})
    return env


def pod_disruption_budget(d: Deployment) -> dict[str, Any]:
    limit = d.deploy.kubernetes.max_unavailable
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(d, d.deploy.name),
        "spec": {"maxUnavailable": limit if limit.endswith("%") else int(limit),
                 "selector": {"matchLabels": _labels(d)}},
    }  # fmt: skip


# -- KEDA ---------------------------------------------------------------------------------------


def trigger_authentication(d: Deployment) -> dict[str, Any]:
    if d.queue.kind == "sqs":
        spec: dict[str, Any] = {"podIdentity": {"provider": "aws"}}
    else:
        ref = {"parameter": "password", "name": d.deploy.kubernetes.secret_name,
               "key": SECRET_KEYS["queue"]}  # fmt: skip
        spec = {"secretTargetRef": [ref]}
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
            "metadata": _meta(d, f"{d.deploy.name}-queue"), "spec": spec}  # fmt: skip


def scaled_object(d: Deployment) -> dict[str, Any]:
    """Replicas = ceil(backlog / target), target = the policy's tasks in flight per node."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _meta(d, d.deploy.name),
        "spec": {
            "scaleTargetRef": {"name": d.deploy.name},
            "pollingInterval": 15,
            "cooldownPeriod": 300,
            "minReplicaCount": d.policy.floor_nodes,
            "maxReplicaCount": d.policy.ceiling_nodes,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": hpa_behavior(d.policy)}},
            "triggers": [_trigger(d)],
        },
    }


def _trigger(d: Deployment) -> dict[str, Any]:
    target = str(math.ceil(d.policy.target_in_flight_per_node))
    auth = {"name": f"{d.deploy.name}-queue"}
    if d.queue.kind == "sqs":  # visible + in flight (scaleOnInFlight): the policy's backlog
        metadata = {"queueURL": d.queue.address, "awsRegion": d.queue.region,
                    "queueLength": target, "scaleOnInFlight": "true"}  # fmt: skip
        return {"type": "aws-sqs-queue", "metadata": metadata, "authenticationRef": auth}
    # XLEN: the stream keeps an entry until it is settled, so its length is queued + in flight
    metadata = {
        "address": d.queue.address,
        "databaseIndex": str(d.queue.database),
        "stream": f"fleetinfer:{{{d.queue.name}}}:stream",
        "streamLength": target,
    }
    if d.node.queue.startswith("rediss://"):
        metadata["enableTLS"] = "true"
    return {"type": "redis-streams", "metadata": metadata, "authenticationRef": auth}


# -- Karpenter ----------------------------------------------------------------------------------


def node_pool(d: Deployment) -> dict[str, Any]:
    """Spot first, on-demand when spot has no capacity (Karpenter prefers spot when a NodePool
    allows both), over both architectures and the configured families."""
    requirements = [
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot", "on-demand"]},
        {"key": "kubernetes.io/arch", "operator": "In", "values": list(d.architectures)},
        {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
        {"key": "karpenter.k8s.aws/instance-family", "operator": "In",
         "values": list(d.families)},
    ]  # fmt: skip
    cpu_limit = math.ceil(d.cpu_millis * d.policy.ceiling_nodes / 1000) * 2
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": d.deploy.name, "labels": _labels(d)},
        "spec": {
            "template": {
                "metadata": {"labels": _labels(d)},
                "spec": {
                    "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass",
                                     "name": d.deploy.kubernetes.node_class},
                    "requirements": requirements,
                    "expireAfter": "720h",
                    "terminationGracePeriod": f"{d.termination_grace_s + 60}s",
                },
            },
            "disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized",
                           "consolidateAfter": "5m", "budgets": [{"nodes": "10%"}]},
            "limits": {"cpu": str(cpu_limit)},
        },
    }  # fmt: skip
