from __future__ import annotations

import fleetinfer
from fleetinfer import errors

PINNED = {
    "App", "Broker", "FleetinferError", "Message", "ModelClient", "ModelHandle", "NodeConfig",
    "NodeReport", "QueueStats", "Reject", "ResultStore", "Retry", "Task", "TaskContext",
    "TaskResult", "TaskStatus", "__version__", "open_broker", "open_store", "run_node", "send_tasks",
}  # fmt: skip


def test_the_public_surface_is_exactly_the_pinned_names() -> None:
    assert set(fleetinfer.__all__) == PINNED
    for name in fleetinfer.__all__:
        assert getattr(fleetinfer, name) is not None


def test_every_error_derives_from_the_one_root_and_is_drawn_in_the_tree() -> None:
    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert classes
    doc = errors.__doc__ or ""
    for cls in classes:
        assert issubclass(cls, errors.FleetinferError), cls
        assert cls.__name__ in doc, f"{cls.__name__} is missing from the tree in errors.py"


def test_importing_the_package_loads_no_subsystem_until_a_name_is_used() -> None:
    import subprocess
    import sys

    code = "import fleetinfer, sys; print(sorted(m for m in sys.modules if m.startswith('fleetinfer')))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "['fleetinfer', 'fleetinfer.errors']"
