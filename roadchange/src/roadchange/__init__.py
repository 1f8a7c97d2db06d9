"""roadchange: HD-map road change detection, fleetinfer's flagship workload."""

__version__ = "0.1.0"
