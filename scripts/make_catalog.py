"""Write src/fleetinfer/plan/catalog.toml from the tables below (run once; the TOML is what ships).

Sources (also written into the catalog):
- on-demand $/h, us-east-1, Linux, shared tenancy: AWS EC2 On-Demand pricing page, June 2025
  (the same list as fleetinfer.bench.instances);
- us-west-2 equals us-east-1 for these types on that list; eu-west-1 is us-east-1 x the region's
  typical uplift for the family (x86 1.114, Graviton 1.114, GPU/Inferentia 1.12), an approximation
  until `fleetinfer catalog refresh` replaces it with the Price List API's figures;
- spot discount and interruption band: representative values of the AWS Spot Instance Advisor's
  bands ("savings over on-demand", "frequency of interruption") as seen in 2025 per family,
  refreshed (discount) by `fleetinfer catalog refresh` from the spot price history.
"""

from __future__ import annotations

from pathlib import Path

# name: (vcpu, memory_gib, arch, family, cpu, features, accelerators, accelerator, us-east-1 $/h)
TYPES = {
    "c7i.4xlarge": (16, 32, "x86_64", "modern-x86", "Xeon Sapphire Rapids", "avx512,vnni,amx", 0, "", 0.714),
    "c7i.8xlarge": (32, 64, "x86_64", "modern-x86", "Xeon Sapphire Rapids", "avx512,vnni,amx", 0, "", 1.428),
    "m7i.8xlarge": (32, 128, "x86_64", "modern-x86", "Xeon Sapphire Rapids", "avx512,vnni,amx", 0, "", 1.6128),
    "r7i.8xlarge": (32, 256, "x86_64", "modern-x86", "Xeon Sapphire Rapids", "avx512,vnni,amx", 0, "", 2.1168),
    "c7a.8xlarge": (32, 64, "x86_64", "modern-x86", "EPYC Genoa", "avx512,vnni", 0, "", 1.64224),
    "m7a.8xlarge": (32, 128, "x86_64", "modern-x86", "EPYC Genoa", "avx512,vnni", 0, "", 1.85472),
    "r7a.8xlarge": (32, 256, "x86_64", "modern-x86", "EPYC Genoa", "avx512,vnni", 0, "", 2.43456),
    "c6i.8xlarge": (32, 64, "x86_64", "modern-x86", "Xeon Ice Lake", "avx512,vnni", 0, "", 1.36),
    "m6i.8xlarge": (32, 128, "x86_64", "modern-x86", "Xeon Ice Lake", "avx512,vnni", 0, "", 1.536),
    "r6i.8xlarge": (32, 256, "x86_64", "modern-x86", "Xeon Ice Lake", "avx512,vnni", 0, "", 2.016),
    "c6a.8xlarge": (32, 64, "x86_64", "older-x86", "EPYC Milan", "avx2", 0, "", 1.224),
    "m6a.8xlarge": (32, 128, "x86_64", "older-x86", "EPYC Milan", "avx2", 0, "", 1.3824),
    "c5.9xlarge": (36, 72, "x86_64", "older-x86", "Xeon Skylake/Cascade Lake", "avx512", 0, "", 1.53),
    "m5.8xlarge": (32, 128, "x86_64", "older-x86", "Xeon Skylake/Cascade Lake", "avx512", 0, "", 1.536),
    "r5.8xlarge": (32, 256, "x86_64", "older-x86", "Xeon Skylake/Cascade Lake", "avx512", 0, "", 2.016),
    "c5a.8xlarge": (32, 64, "x86_64", "older-x86", "EPYC Rome", "avx2", 0, "", 1.232),
    "m5a.8xlarge": (32, 128, "x86_64", "older-x86", "EPYC Naples", "avx2", 0, "", 1.376),
    "r5a.8xlarge": (32, 256, "x86_64", "older-x86", "EPYC Naples", "avx2", 0, "", 1.808),
    "c4.8xlarge": (36, 60, "x86_64", "older-x86", "Xeon Haswell", "avx2", 0, "", 1.591),
    "m4.10xlarge": (40, 160, "x86_64", "older-x86", "Xeon Broadwell", "avx2", 0, "", 2.0),
    "r4.8xlarge": (32, 244, "x86_64", "older-x86", "Xeon Broadwell", "avx2", 0, "", 2.128),
    "c6g.8xlarge": (32, 64, "arm64", "graviton", "Graviton2", "neon", 0, "", 1.088),
    "m6g.8xlarge": (32, 128, "arm64", "graviton", "Graviton2", "neon", 0, "", 1.232),
    "r6g.8xlarge": (32, 256, "arm64", "graviton", "Graviton2", "neon", 0, "", 1.6128),
    "c7g.8xlarge": (32, 64, "arm64", "graviton", "Graviton3", "neon,sve,bf16", 0, "", 1.1564),
    "m7g.8xlarge": (32, 128, "arm64", "graviton", "Graviton3", "neon,sve,bf16", 0, "", 1.3056),
    "r7g.8xlarge": (32, 256, "arm64", "graviton", "Graviton3", "neon,sve,bf16", 0, "", 1.7136),
    "c8g.8xlarge": (32, 64, "arm64", "graviton", "Graviton4", "neon,sve2,bf16", 0, "", 1.27616),
    "m8g.8xlarge": (32, 128, "arm64", "graviton", "Graviton4", "neon,sve2,bf16", 0, "", 1.43616),
    "r8g.8xlarge": (32, 256, "arm64", "graviton", "Graviton4", "neon,sve2,bf16", 0, "", 1.88544),
    "g4dn.xlarge": (4, 16, "x86_64", "gpu", "Xeon Cascade Lake", "avx512,vnni", 1, "NVIDIA T4", 0.526),
    "g5.xlarge": (4, 16, "x86_64", "gpu", "EPYC Rome", "avx2", 1, "NVIDIA A10G", 1.006),
    "g6.xlarge": (4, 16, "x86_64", "gpu", "EPYC Milan", "avx2", 1, "NVIDIA L4", 0.8048),
    "g6e.2xlarge": (8, 64, "x86_64", "gpu", "EPYC Milan", "avx2", 1, "NVIDIA L40S", 2.24208),
    "inf1.xlarge": (4, 8, "x86_64", "inferentia", "Xeon Cascade Lake", "avx512,vnni", 1, "AWS Inferentia", 0.228),
    "inf2.xlarge": (4, 16, "x86_64", "inferentia", "EPYC Milan", "avx2", 1, "AWS Inferentia2", 0.7582),
    "inf2.8xlarge": (32, 128, "x86_64", "inferentia", "EPYC Milan", "avx2", 1, "AWS Inferentia2", 1.9679),
}

# family: (spot discount us-east-1, us-west-2, eu-west-1), (interruption band per region)
SPOT = {
    "modern-x86": ((0.62, 0.64, 0.60), ("5-10%", "<5%", "5-10%")),
    "older-x86": ((0.58, 0.60, 0.56), ("10-15%", "5-10%", "10-15%")),
    "graviton": ((0.64, 0.66, 0.62), ("<5%", "<5%", "5-10%")),
    "gpu": ((0.55, 0.58, 0.52), ("15-20%", "10-15%", ">20%")),
    "inferentia": ((0.60, 0.62, 0.58), ("5-10%", "5-10%", "10-15%")),
}
REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
EU_UPLIFT = {"modern-x86": 1.114, "older-x86": 1.114, "graviton": 1.114, "gpu": 1.12, "inferentia": 1.12}

HEADER = '''# fleetinfer instance catalog: shipped data, read by fleetinfer.plan.catalog.
# Generated by scripts/make_catalog.py; refresh prices with `fleetinfer catalog refresh`.

[catalog]
as_of = "2025-06"
currency = "USD"
sources = [
  "on-demand $/h, us-east-1 and us-west-2, Linux, shared tenancy: AWS EC2 On-Demand pricing (aws.amazon.com/ec2/pricing/on-demand), June 2025",
  "eu-west-1 on-demand: us-east-1 x 1.114 (CPU) / 1.12 (GPU, Inferentia), the typical uplift on that list: an approximation until `fleetinfer catalog refresh`",
  "spot discount and interruption band: representative per-family values of the AWS Spot Instance Advisor (aws.amazon.com/ec2/spot/instance-advisor), 2025",
  "vCPUs, memory, CPU generation, accelerators: AWS EC2 instance type pages (aws.amazon.com/ec2/instance-types)",
]

# Spot Instance Advisor bands: share of spot instances interrupted over a month (midpoint used),
# and the planner's assumed share of a pool's node-hours served by on-demand fallback capacity
# when its spot capacity runs short (more interruptions, scarcer capacity).
[bands."<5%"]
monthly_interruption = 0.025
on_demand_fallback = 0.0
[bands."5-10%"]
monthly_interruption = 0.075
on_demand_fallback = 0.03
[bands."10-15%"]
monthly_interruption = 0.125
on_demand_fallback = 0.06
[bands."15-20%"]
monthly_interruption = 0.175
on_demand_fallback = 0.10
[bands.">20%"]
monthly_interruption = 0.25
on_demand_fallback = 0.15
'''


def _table(name: str, row: tuple) -> str:  # type: ignore[type-arg]
    vcpu, mem, arch, family, cpu, features, accel, accel_name, price = row
    discounts, bands = SPOT[family]
    prices = {"us-east-1": price, "us-west-2": price, "eu-west-1": round(price * EU_UPLIFT[family], 5)}
    feats = ", ".join(f'"{f}"' for f in features.split(","))
    lines = [
        f'\n[types."{name}"]',
        f"vcpu = {vcpu}",
        f"memory_gib = {mem}",
        f'arch = "{arch}"',
        f'family = "{family}"',
        f'cpu = "{cpu}"',
        f"features = [{feats}]",
        f"accelerators = {accel}",
        f'accelerator = "{accel_name}"',
        "usd_per_hour = { " + ", ".join(f'"{r}" = {prices[r]}' for r in REGIONS) + " }",
        "spot_discount = { " + ", ".join(f'"{r}" = {d}' for r, d in zip(REGIONS, discounts)) + " }",
        "interruption_band = { " + ", ".join(f'"{r}" = "{b}"' for r, b in zip(REGIONS, bands)) + " }",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    out = Path(__file__).resolve().parent.parent / "src/fleetinfer/plan/catalog.toml"
    out.write_text(HEADER + "".join(_table(n, r) for n, r in TYPES.items()), encoding="utf-8")
    print(f"{out}: {len(TYPES)} types")


if __name__ == "__main__":
    main()
