"""Rendered files: name -> text, and writing them into a folder (only the files rendered)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleetinfer.deploy import ecs, kubernetes
from fleetinfer.deploy.settings import Deployment
from fleetinfer.deploy.text import to_yaml
from fleetinfer.errors import ConfigError

TARGETS = ("kubernetes", "ecs")
HEADER = "# Rendered by `fleetinfer deploy render {target}`: edit fleetinfer.toml, not this file.\n"


def render_files(target: str, deployment: Deployment) -> dict[str, str]:
    """File name -> text for `target` (kubernetes: YAML; ecs: JSON)."""
    if target == "kubernetes":
        objects = kubernetes.render(deployment)
        return {name: HEADER.format(target=target) + to_yaml(obj) for name, obj in objects.items()}
    if target == "ecs":
        return {name: _json(obj) for name, obj in ecs.render(deployment).items()}
    raise ConfigError(f"unknown deployment target {target!r}: expected one of {', '.join(TARGETS)}")


def _json(value: Any) -> str:
    return json.dumps(value, indent=2) + "\n"


def write_files(files: dict[str, str], out_dir: Path) -> list[Path]:
    """Write each file into `out_dir` (created); returns the paths written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in files.items():
            path = out_dir / name
            path.write_text(text, encoding="utf-8")
            written.append(path)
    except OSError as exc:
        raise ConfigError(f"cannot write the rendered files into {str(out_dir)!r}: {exc}") from exc
    return written
