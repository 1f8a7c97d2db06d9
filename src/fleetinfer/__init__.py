"""fleetinfer: model-heavy task pipelines across a fleet of machines at the lowest cost per task.

What users import is listed in `__all__` (pinned by tests/unit/test_public_api.py); everything else
may change between releases.
"""

from fleetinfer.client import ModelClient, ModelHandle
from fleetinfer.errors import FleetinferError
from fleetinfer.node.agent import NodeConfig, NodeReport, run_node
from fleetinfer.queue import open_broker
from fleetinfer.queue.base import Broker, Message, QueueStats
from fleetinfer.results import open_store
from fleetinfer.results.base import ResultStore, TaskResult, TaskStatus
from fleetinfer.task import App, Reject, Retry, Task, TaskContext, send_tasks

__version__ = "0.1.0"

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
