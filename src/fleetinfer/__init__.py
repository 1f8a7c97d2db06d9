"""fleetinfer: model-heavy task pipelines across a fleet of machines at the lowest cost per task."""

from fleetinfer.errors import FleetinferError

__version__ = "0.1.0"

__all__ = ["FleetinferError", "__version__"]
