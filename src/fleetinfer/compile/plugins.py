"""Task plugins: the calibration inputs and the task metric a workload gives `fleetinfer compile`.

A workload registers an object under the entry-point group `fleetinfer.compile.tasks`; its
name is what `--calibration NAME` and `--evaluation NAME` accept. fleetinfer never imports a
workload by name: roadchange registers itself in its own distribution,

    [project.entry-points."fleetinfer.compile.tasks"]
    roadchange = "roadchange.compile_plugin:PLUGIN"
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Protocol

from fleetinfer.compile.accuracy import Evaluator
from fleetinfer.compile.calibration import CalibrationSource
from fleetinfer.errors import ConfigError

ENTRY_POINT_GROUP = "fleetinfer.compile.tasks"


class TaskPlugin(Protocol):
    """What a workload registers: calibration inputs and an evaluator of its task metric."""

    def calibration(self, *, segments: int) -> CalibrationSource: ...

    def evaluator(self, *, segments: int, seed: int) -> Evaluator: ...


def plugin_names() -> list[str]:
    """Names of the task plugins installed, sorted."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def load_plugin(name: str) -> TaskPlugin | None:
    """The plugin registered as `name`, or None when none is; a broken one is a `ConfigError`."""
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        try:
            plugin: TaskPlugin = ep.load()
        except Exception as exc:  # a plugin's import error, whatever it is
            raise ConfigError(
                f"the compile task plugin {name!r} ({ep.value}) failed to load: "
                f"{type(exc).__name__}: {exc}; reinstall the distribution that provides it"
            ) from exc
        return plugin
    return None
