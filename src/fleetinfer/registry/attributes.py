"""What a node is, which groups it belongs to, and which compiled build it runs.

`NodeAttributes` are strings: `node` (its id), `arch` (x86_64 / aarch64), `cpu_features`
(space-separated flags from /proc/cpuinfo, the ones compile targets care about), `accelerators`
(`nvidia:4`, `neuron:2` or empty), `instance_type` and `lifecycle` (spot / on-demand, from the EC2
instance metadata service when it answers within a short timeout, IMDSv2), plus the labels of its
configuration (`group = "a"`). Overrides (configuration, tests) replace detected values.

A selector is a conjunction of terms over attributes, comma-separated: `group=a`,
`arch=x86_64|aarch64` (one of), `lifecycle!=spot`, `cpu_features~avx512_vnni` (contains), `*`
(every node).
"""

from __future__ import annotations

import os
import platform
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fleetinfer.errors import ConfigError

IMDS_URL = "http://169.254.169.254"
IMDS_TIMEOUT_S = 0.3
INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "bf16")
ACCELERATOR_TARGETS = {"cuda": "nvidia", "tensorrt": "nvidia", "neuron": "neuron"}

NodeAttributes = dict[str, str]


def detect_attributes(
    node: str,
    *,
    labels: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
    imds_url: str | None = IMDS_URL,
) -> NodeAttributes:
    """This machine's attributes; `overrides` win over detection, labels are added."""
    attributes = {
        "node": node,
        "arch": platform.machine(),
        "cpu_features": " ".join(f for f in INTERESTING_FLAGS if f in _cpu_flags()),
        "accelerators": _accelerators(),
        "instance_type": "",
        "lifecycle": "",
    }
    if imds_url and not (overrides and "instance_type" in overrides):
        attributes.update(_instance_metadata(imds_url))
    attributes.update(labels or {})
    attributes.update(overrides or {})
    attributes["node"] = node
    return attributes


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def _accelerators() -> str:
    found = []
    nvidia = [d for d in _listdir("/dev") if d.startswith("nvidia") and d[6:].isdigit()]
    if nvidia:
        found.append(f"nvidia:{len(nvidia)}")
    neuron = [d for d in _listdir("/dev") if d.startswith("neuron") and d[6:].isdigit()]
    if neuron:
        found.append(f"neuron:{len(neuron)}")
    return " ".join(found)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _instance_metadata(base: str) -> dict[str, str]:
    """instance type and lifecycle from IMDSv2; nothing when it does not answer quickly."""
    try:
        token_request = urllib.request.Request(
            f"{base}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
        )
        with urllib.request.urlopen(token_request, timeout=IMDS_TIMEOUT_S) as response:
            token = response.read().decode()
        found = {}
        for key, path in (("instance_type", "instance-type"), ("lifecycle", "instance-life-cycle")):
            request = urllib.request.Request(
                f"{base}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": token}
            )
            with urllib.request.urlopen(request, timeout=IMDS_TIMEOUT_S) as response:
                found[key] = response.read().decode().strip()
        if found.get("lifecycle") == "normal":
            found["lifecycle"] = "on-demand"
        return found
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True, slots=True)
class Term:
    key: str
    op: str  # "=", "!=", "~"
    values: tuple[str, ...]

    def matches(self, attributes: Mapping[str, str]) -> bool:
        value = attributes.get(self.key, "")
        if self.op == "~":
            return all(v in value.split() for v in self.values)
        hit = value in self.values
        return hit if self.op == "=" else not hit


@dataclass(frozen=True, slots=True)
class Selector:
    text: str
    terms: tuple[Term, ...]

    @classmethod
    def parse(cls, text: str) -> Selector:
        text = text.strip()
        if text in ("*", ""):
            return cls("*", ())
        return cls(text, tuple(_term(part.strip(), text) for part in text.split(",")))

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return all(term.matches(attributes) for term in self.terms)


def _term(part: str, whole: str) -> Term:
    for op in ("!=", "~", "="):
        if op in part:
            key, _, values = part.partition(op)
            if key.strip() and values.strip():
                return Term(key.strip(), op, tuple(v.strip() for v in values.split("|")))
    raise ConfigError(
        f"selector {whole!r}: term {part!r} is not KEY=VALUE, KEY!=VALUE or KEY~FLAG "
        "(values joined with |, terms with commas, * for every node)"
    )


def target_runs_on(target: str, attributes: Mapping[str, str]) -> bool:
    """Whether a compile target's build can run on a node with these attributes."""
    from fleetinfer.compile.targets import TARGETS

    spec = TARGETS.get(target)
    if spec is None:
        return False
    arch = attributes.get("arch", "")
    if spec.machine != "any" and spec.machine != _normal_arch(arch):
        return False
    if not spec.cpu_flags <= set(attributes.get("cpu_features", "").split()):
        return False
    needed = ACCELERATOR_TARGETS.get(target)
    return needed is None or needed in attributes.get("accelerators", "")


def target_rank(target: str) -> tuple[int, int, int]:
    """The more specific a target, the higher: accelerator, then CPU flags, then architecture."""
    from fleetinfer.compile.targets import TARGETS

    spec = TARGETS[target]
    return (int(target in ACCELERATOR_TARGETS), len(spec.cpu_flags), int(spec.machine != "any"))


def _normal_arch(arch: str) -> str:
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(arch, arch)
