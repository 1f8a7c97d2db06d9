"""Instance shapes and prices for capacity projections.

The built-in table holds common AWS shapes (x86, Graviton, GPU) with their Linux on-demand prices in
us-east-1 as listed on AWS's EC2 price list in June 2025 (`PRICES_AS_OF`). Prices change: pass your
own table (`load_instances(path)`, TOML) for decisions that spend money.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fleetinfer.errors import ConfigError

PRICES_AS_OF = "2025-06 (AWS EC2 on-demand, Linux, us-east-1)"


@dataclass(frozen=True, slots=True)
class InstanceShape:
    """A machine shape: cores, memory, accelerator and price."""

    name: str
    vcpu: int
    memory_gib: float
    usd_per_hour: float
    arch: str = "x86_64"
    gpus: int = 0
    gpu: str = ""


_BUILTIN: tuple[InstanceShape, ...] = (
    InstanceShape("c7i.4xlarge", 16, 32, 0.714),
    InstanceShape("c7i.8xlarge", 32, 64, 1.428),
    InstanceShape("m7i.8xlarge", 32, 128, 1.6128),
    InstanceShape("r7i.8xlarge", 32, 256, 2.1168),
    InstanceShape("r6i.8xlarge", 32, 256, 2.016),
    InstanceShape("m5.8xlarge", 32, 128, 1.536),
    InstanceShape("r5.8xlarge", 32, 256, 2.016),
    InstanceShape("c7g.8xlarge", 32, 64, 1.1564, arch="arm64"),
    InstanceShape("m7g.8xlarge", 32, 128, 1.3056, arch="arm64"),
    InstanceShape("r8g.8xlarge", 32, 256, 1.88544, arch="arm64"),
    InstanceShape("g5.xlarge", 4, 16, 1.006, gpus=1, gpu="A10G"),
    InstanceShape("g6.xlarge", 4, 16, 0.8048, gpus=1, gpu="L4"),
    InstanceShape("g6e.2xlarge", 8, 64, 2.24208, gpus=1, gpu="L40S"),
)

BUILTIN_INSTANCES: Mapping[str, InstanceShape] = {shape.name: shape for shape in _BUILTIN}


def load_instances(path: Path) -> dict[str, InstanceShape]:
    """Read a table of shapes, TOML (`[instances."name"] vcpu = 32 memory_gib = 256
    usd_per_hour = 2.0`) or, for a `.json` file, the same as JSON (`{"instances": {"name": {…}}}`).
    """
    try:
        text = path.read_text(encoding="utf-8")
        document = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        table = document["instances"]
        return {
            name: InstanceShape(
                name=name,
                vcpu=int(entry["vcpu"]),
                memory_gib=float(entry["memory_gib"]),
                usd_per_hour=float(entry["usd_per_hour"]),
                arch=str(entry.get("arch", "x86_64")),
                gpus=int(entry.get("gpus", 0)),
                gpu=str(entry.get("gpu", "")),
            )
            for name, entry in table.items()
        }
    except (
        OSError,
        tomllib.TOMLDecodeError,
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
    ) as exc:
        raise ConfigError(
            f'{path}: expected a TOML file of [instances."<name>"] tables (or JSON '
            '{"instances": {"<name>": {…}}}) with vcpu, memory_gib and usd_per_hour: '
            f"{exc!r}"
        ) from exc


def instance_shape(name: str, table: Mapping[str, InstanceShape] | None = None) -> InstanceShape:
    shapes = BUILTIN_INSTANCES if table is None else {**BUILTIN_INSTANCES, **table}
    if name not in shapes:
        raise ConfigError(f"unknown instance shape {name!r}: known are {sorted(shapes)}")
    return shapes[name]
