"""How fast a task runs on each kind of CPU and accelerator, relative to modern x86.

A factor is throughput per vCPU relative to a modern x86 vCPU with AVX-512 and VNNI (Sapphire
Rapids c7i, the seed's "comparable modern x86"). A profile measured on one host is carried to an
instance type by scaling its CPU seconds per task with host factor ÷ type factor.

Sources. The seed's measured CDNet samples/s per 8xlarge (32 vCPU): Graviton4 r8g 19.4, modern x86
13.5, older x86 6.64, hence 1.437 and 0.492. This project's own measurement of the AVX-512 against
the AVX2 EPYC host (README: a `cdnet-l` window 16 ms against 31 ms, ratio 0.52) agrees with the
older-x86 figure, so a host without AVX-512 VNNI is placed in that class. Graviton2 and Graviton3
have no measured figure here: they are assumptions, named as such in `SOURCES`.

Accelerators run the model part of a task (`model_share` of its CPU seconds) at the speed of
`vcpu_equivalents` modern x86 vCPUs: the seed's 54.8 samples/s on one L40S (g6e.2xlarge) against
5.85 on 16 vCPUs (c7i.4xlarge) gives 150; other chips are scaled from it by their vendors' dense
FP16 (Inferentia1: INT8) tensor throughput, an estimate until measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fleetinfer.plan.catalog import InstanceType

SEED_SAMPLES_PER_S = {"graviton4": 19.4, "modern-x86": 13.5, "older-x86": 6.64}
MODERN_X86 = 1.0
OLDER_X86 = SEED_SAMPLES_PER_S["older-x86"] / SEED_SAMPLES_PER_S["modern-x86"]
GRAVITON4 = SEED_SAMPLES_PER_S["graviton4"] / SEED_SAMPLES_PER_S["modern-x86"]
L40S_VCPU_EQUIVALENTS = 54.8 / (5.85 / 16)

CPU_FACTORS = {
    "Graviton4": GRAVITON4,
    "Graviton3": 0.8 * GRAVITON4,
    "Graviton2": OLDER_X86,
}
SOURCES = {
    "modern-x86": "reference (seed: 13.5 CDNet samples/s per 8xlarge)",
    "older-x86": "seed: 6.64 / 13.5 CDNet samples/s per 8xlarge; README: cdnet-l 16 vs 31 ms/window",
    "Graviton4": "seed: 19.4 / 13.5 CDNet samples/s per 8xlarge (r8g)",
    "Graviton3": "assumption: 0.8 x Graviton4 (no measured figure)",
    "Graviton2": "assumption: as older x86 (no measured figure)",
    "accelerators": "seed: 54.8 samples/s per L40S vs 5.85 per 16 vCPU; others by vendor FP16 TFLOPS",
}
# dense FP16 tensor TFLOPS (Inferentia1: INT8 TOPS / 2) relative to the L40S's 181
ACCELERATOR_VCPU_EQUIVALENTS = {
    "NVIDIA L40S": L40S_VCPU_EQUIVALENTS,
    "NVIDIA A10G": L40S_VCPU_EQUIVALENTS * 70 / 181,
    "NVIDIA L4": L40S_VCPU_EQUIVALENTS * 121 / 181,
    "NVIDIA T4": L40S_VCPU_EQUIVALENTS * 65 / 181,
    "AWS Inferentia2": L40S_VCPU_EQUIVALENTS * 190 / 181,
    "AWS Inferentia": L40S_VCPU_EQUIVALENTS * 64 / 181,
}


@dataclass(frozen=True, slots=True)
class HostSpeed:
    """The class of the host a profile was measured on and its factor."""

    cpu: str
    klass: str
    factor: float
    source: str


def cpu_factor(instance: InstanceType) -> float:
    """Throughput per vCPU of `instance` relative to modern x86."""
    if instance.cpu in CPU_FACTORS:
        return CPU_FACTORS[instance.cpu]
    return MODERN_X86 if {"avx512", "vnni"} <= set(instance.features) else OLDER_X86


def accelerator_vcpu_equivalents(instance: InstanceType) -> float:
    """Modern-x86 vCPUs one accelerator of `instance` replaces for the model part (0: none)."""
    if not instance.accelerators:
        return 0.0
    return instance.accelerators * ACCELERATOR_VCPU_EQUIVALENTS.get(instance.accelerator, 0.0)


def host_speed(cpuinfo: str | None = None) -> HostSpeed:
    """This machine's class from /proc/cpuinfo: AVX-512 with VNNI is modern x86, else older."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    flags = next((set(line.split(":", 1)[1].split()) for line in text.splitlines()
                  if line.startswith("flags")), set())  # fmt: skip
    if "avx512_vnni" in flags or "amx_tile" in flags:
        return HostSpeed(model, "modern-x86", MODERN_X86, SOURCES["modern-x86"])
    if "asimd" in flags or "aarch64" in text:
        return HostSpeed(model, "Graviton4", GRAVITON4, SOURCES["Graviton4"])
    return HostSpeed(model, "older-x86", OLDER_X86, SOURCES["older-x86"])


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return ""
