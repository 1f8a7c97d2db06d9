"""Compile targets: which precisions each offers, how its artifact is built, whether it runs here.

A target names hardware, not a file format: every artifact is an ONNX model that ONNX Runtime
loads with the target's execution providers. What differs per target is the offline graph
optimization level (CPU targets bake in CPU-only fusions; GPU targets stay provider-neutral so their
runtime fuses for itself), the INT8 scheme (u8 activations with `reduce_range` on x86 CPUs without
VNNI, symmetric s8 activations for TensorRT) and session configuration entries (BF16 fast math on
ARM).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import onnxruntime as ort

from fleetinfer.errors import UnsupportedBuildError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
ARM_BF16_FASTMATH = "mlas.enable_gemm_fastmath_arm64_bfloat16"


@dataclass(frozen=True, slots=True)
class Target:
    """One hardware target of `fleetinfer compile --target`."""

    name: str
    providers: tuple[str, ...]
    precisions: tuple[str, ...]
    offline_optimization: str  # a repository optimization level: disable | basic | extended
    machine: str  # "x86_64", "aarch64" or "any"
    cpu_flags: frozenset[str] = field(default_factory=frozenset)
    description: str = ""


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "cpu",
            ("CPUExecutionProvider",),
            ("fp32", "int8"),
            "extended",
            "any",
            description="this machine's CPU (INT8 reduce_range decided by its VNNI support)",
        ),
        Target(
            "cpu-avx512",
            ("CPUExecutionProvider",),
            ("fp32", "int8"),
            "extended",
            "x86_64",
            frozenset({"avx512f", "avx512_vnni"}),
            "x86 with AVX-512 VNNI (c7i, r7i, m7i ...)",
        ),
        Target(
            "cpu-arm64",
            ("CPUExecutionProvider",),
            ("fp32", "fp16", "bf16", "int8"),
            "extended",
            "aarch64",
            description="ARM Neoverse (Graviton 3/4): BF16 fast math, sdot INT8",
        ),
        Target(
            "cuda",
            ("CUDAExecutionProvider",),
            ("fp32", "fp16", "int8"),
            "disable",
            "any",
            description="NVIDIA GPU through the CUDA execution provider",
        ),
        Target(
            "tensorrt",
            ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
            ("fp32", "fp16", "int8"),
            "disable",
            "any",
            description="NVIDIA GPU through TensorRT (INT8 from symmetric QDQ)",
        ),
        Target(
            "openvino",
            ("OpenVINOExecutionProvider",),
            ("fp32", "fp16", "int8"),
            "disable",
            "any",
            description="Intel CPU / GPU / NPU through OpenVINO",
        ),
    )
}


def get_target(name: str, precision: str) -> Target:
    """The target `name`, checked to offer `precision`."""
    if name not in TARGETS:
        raise UnsupportedBuildError(f"unknown target {name!r}: expected one of {sorted(TARGETS)}")
    if precision not in PRECISIONS:
        raise UnsupportedBuildError(
            f"unknown precision {precision!r}: expected one of {list(PRECISIONS)}"
        )
    target = TARGETS[name]
    if precision not in target.precisions:
        raise UnsupportedBuildError(
            f"target {name!r} does not offer {precision}: it offers {list(target.precisions)}. "
            "FP16 is for GPUs and ARM (x86 CPUs run it through casts, slower than FP32); "
            "BF16 fast math exists only on ARM (cpu-arm64)"
        )
    return target


@cache
def host_cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def host_machine() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def host_description() -> str:
    """`x86_64, 2 CPUs, avx2 (no VNNI)`-style summary recorded with every measurement."""
    import os

    flags = host_cpu_flags()
    simd = [
        f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd") if f in flags
    ]
    vnni = "VNNI" if flags & VNNI_FLAGS else "no VNNI"
    return f"{host_machine()}, {os.cpu_count()} CPUs, {' '.join(simd) or 'baseline SIMD'} ({vnni})"


def unavailable_reason(target: Target) -> str | None:
    """Why `target` cannot run on this machine, or None when it can."""
    missing_providers = [p for p in target.providers if p not in ort.get_available_providers()]
    if missing_providers:
        return (
            f"this onnxruntime build has no {', '.join(missing_providers)} "
            f"(available: {', '.join(ort.get_available_providers())}); measure on a {target.name} machine"
        )
    if target.machine != "any" and target.machine != host_machine():
        return (
            f"target {target.name} needs a {target.machine} CPU, this machine is {host_machine()}"
        )
    missing_flags = sorted(target.cpu_flags - host_cpu_flags())
    if missing_flags:
        return f"target {target.name} needs CPU flags {missing_flags}, absent on this machine"
    return None


def int8_reduce_range(target: Target) -> bool:
    """7-bit weights avoid the u8 x s8 saturation of x86 CPUs without VNNI (vpmaddubsw)."""
    if target.name == "cpu":
        return host_machine() == "x86_64" and not host_cpu_flags() & VNNI_FLAGS
    return False


def session_config_entries(target: Target, precision: str) -> dict[str, str]:
    """ONNX Runtime session configuration entries the version must be loaded with."""
    if precision == "bf16":
        return {ARM_BF16_FASTMATH: "1"}
    return {}
