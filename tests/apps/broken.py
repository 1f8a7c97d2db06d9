"""A task module whose import fails, as user code sometimes does."""

from fleetinfer.task import App

app = App("broken")

raise RuntimeError("the config file this module reads at import time is missing")
