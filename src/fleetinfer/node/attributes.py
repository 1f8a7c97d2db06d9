"""What a node can run (placement): its attributes, and whether they satisfy a task's requirements.

    node_attributes(overrides) -> dict[str, str]     detected, then overridden by configuration
    satisfies(requires, attributes) -> bool         every required key has the required value
    parse_requirements(["arch=arm64", ...])         the CLI's `--requires` into a checked dict

Attribute (and requirement) keys form one small vocabulary, so a typo is an error, not a task
that waits forever:

    arch                  amd64 | arm64            platform.machine(), normalized
    accelerator           none | cuda | neuron     CUDA_VISIBLE_DEVICES / nvidia-smi, /dev/neuron*
    accelerator_count     0, 1, 2 ...              how many devices of that kind
    cpu.<flag>            true                     every flag of /proc/cpuinfo (cpu.avx512_vnni)
    label.<name>          any value                free labels from the node's configuration

Values are lowercase letters, digits and `_` (so every requirement maps to a queue name on every
backend, see `fleetinfer.queue.classes`). Helper note: the registry's group selectors (issue 24,
items 1-4) may detect attributes too; this module is the placement side of that one vocabulary.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from fleetinfer.errors import ConfigError, InputError

FIXED_KEYS = ("arch", "accelerator", "accelerator_count")
PREFIXED_KEYS = ("cpu.", "label.")
_NAME = re.compile(r"[a-z0-9_]{1,40}")
_ARCH_ALIASES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def key_problem(key: object) -> str | None:
    """Why `key` is not a capability key, or None when it is one."""
    if not isinstance(key, str):
        return f"a key must be text, got {type(key).__name__}"
    if key in FIXED_KEYS:
        return None
    for prefix in PREFIXED_KEYS:
        if key.startswith(prefix) and _NAME.fullmatch(key[len(prefix) :]):
            return None
    return (
        f"unknown capability key {key!r}: expected one of {', '.join(FIXED_KEYS)}, "
        "cpu.<flag> (e.g. cpu.avx512_vnni) or label.<name>, names of a-z 0-9 _"
    )


def value_problem(key: str, value: object) -> str | None:
    """Why `value` is not a valid value for `key`, or None."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        return f"the value of {key!r} must be 1 to 40 of a-z 0-9 _, got {value!r}"
    if key.startswith("cpu.") and value != "true":
        return f"the value of {key!r} must be 'true' (a CPU flag is present or not), got {value!r}"
    return None


def check_requirements(requires: object, *, what: str = "requirements") -> dict[str, str]:
    """A checked copy of `requires` (a mapping of capability key to value); `InputError` else."""
    if not isinstance(requires, Mapping):
        raise InputError(f"{what} must be a mapping of key to value, got {type(requires).__name__}")
    checked: dict[str, str] = {}
    for key, value in requires.items():
        problem = key_problem(key) or value_problem(key, value)
        if problem is not None:
            raise InputError(f"{what}: {problem}")
        checked[key] = value
    return checked


def parse_requirements(items: Iterable[str]) -> dict[str, str]:
    """`["arch=arm64", "cpu.avx512_vnni=true"]` as a checked dict; `InputError` names the bad item."""
    requires: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(
                f"--requires {item!r} is malformed: expected KEY=VALUE, e.g. --requires arch=arm64"
            )
        if key.strip() in requires:
            raise InputError(f"--requires names {key.strip()!r} twice: give each key once")
        requires[key.strip()] = value.strip()
    return check_requirements(requires, what="--requires")


def satisfies(requires: Mapping[str, str], attributes: Mapping[str, str]) -> bool:
    """True when every required key is an attribute with exactly the required value."""
    return all(attributes.get(key) == value for key, value in requires.items())


def node_attributes(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """This machine's attributes, then `overrides` (configuration labels) on top."""
    attributes = {"arch": normalized_arch(platform.machine())}
    attributes.update(accelerator_attributes())
    attributes.update({f"cpu.{flag}": "true" for flag in cpu_flags()})
    if overrides:
        attributes.update(check_labels(overrides))
    return attributes


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Configuration labels use the same keys as requirements; a bad one is a `ConfigError`."""
    try:
        return check_requirements(labels, what="node labels")
    except InputError as exc:
        raise ConfigError(f"{exc} (fix `labels` in the node configuration)") from exc


def normalized_arch(machine: str) -> str:
    """x86_64 → amd64, aarch64 → arm64; anything else lowercased with odd characters dropped."""
    lowered = machine.lower()
    return _ARCH_ALIASES.get(lowered) or re.sub(r"[^a-z0-9_]", "_", lowered)[:40] or "unknown"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The CPU feature flags of the first processor (`flags` on x86, `Features` on arm64)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() in ("flags", "Features"):
            return sorted({f for f in value.split() if _NAME.fullmatch(f)})
    return []


def accelerator_attributes(
    environ: Mapping[str, str] | None = None, dev: Path = Path("/dev")
) -> dict[str, str]:
    """`accelerator` and `accelerator_count`: Neuron devices, else CUDA devices, else none."""
    env = os.environ if environ is None else environ
    neuron = sorted(glob.glob(str(dev / "neuron*")))
    if neuron:
        return {"accelerator": "neuron", "accelerator_count": str(len(neuron))}
    cuda = cuda_device_count(env)
    if cuda:
        return {"accelerator": "cuda", "accelerator_count": str(cuda)}
    return {"accelerator": "none", "accelerator_count": "0"}


def cuda_device_count(environ: Mapping[str, str]) -> int:
    """Devices named by CUDA_VISIBLE_DEVICES; without it, 1 when nvidia-smi is installed (the
    node's `devices` setting gives the real count)."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return 1 if shutil.which("nvidia-smi") else 0
