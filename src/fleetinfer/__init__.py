"""fleetinfer: model-heavy task pipelines across a fleet of machines at the lowest cost per task.

What users import is listed in `__all__` (pinned by tests/unit/test_public_api.py); everything else
may change between releases. Names are imported on first use, so a worker process that needs only
the task API does not pay for the node agent, the model server or the queue drivers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fleetinfer.errors import FleetinferError

if TYPE_CHECKING:
    from fleetinfer.client import ModelClient, ModelHandle
    from fleetinfer.node.agent import NodeConfig, NodeReport, run_node
    from fleetinfer.queue import open_broker
    from fleetinfer.queue.base import Broker, Message, QueueStats
    from fleetinfer.results import open_store
    from fleetinfer.results.base import ResultStore, TaskResult, TaskStatus
    from fleetinfer.task import App, Reject, Retry, Task, TaskContext, send_tasks

__version__ = "0.1.0"

_LAZY = {
    "App": "fleetinfer.task",
    "Broker": "fleetinfer.queue.base",
    "Message": "fleetinfer.queue.base",
    "ModelClient": "fleetinfer.client",
    "ModelHandle": "fleetinfer.client",
    "NodeConfig": "fleetinfer.node.agent",
    "NodeReport": "fleetinfer.node.agent",
    "QueueStats": "fleetinfer.queue.base",
    "Reject": "fleetinfer.task",
    "ResultStore": "fleetinfer.results.base",
    "Retry": "fleetinfer.task",
    "Task": "fleetinfer.task",
    "TaskContext": "fleetinfer.task",
    "TaskResult": "fleetinfer.results.base",
    "TaskStatus": "fleetinfer.results.base",
    "open_broker": "fleetinfer.queue",
    "open_store": "fleetinfer.results",
    "run_node": "fleetinfer.node.agent",
    "send_tasks": "fleetinfer.task",
}

__all__ = [
    "App",
    "Broker",
    "FleetinferError",
    "Message",
    "ModelClient",
    "ModelHandle",
    "NodeConfig",
    "NodeReport",
    "QueueStats",
    "Reject",
    "ResultStore",
    "Retry",
    "Task",
    "TaskContext",
    "TaskResult",
    "TaskStatus",
    "__version__",
    "open_broker",
    "open_store",
    "run_node",
    "send_tasks",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fleetinfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
