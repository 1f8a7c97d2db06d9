"""The instance catalog: machine shapes, prices per region, spot discount and interruption band.

The catalog ships as package data (`catalog.toml`, dated in `[catalog] as_of`, its sources listed in
`[catalog] sources`); `fleetinfer catalog refresh` writes a refreshed copy (JSON, same layout) that
`load_catalog(path)` reads instead. An `Offer` is one instance type in one region, priced:

    spot $/h            = on-demand $/h × (1 - spot discount)
    interruptions / h   = -ln(1 - monthly share interrupted) / 730      (the band's midpoint)
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fleetinfer.bench.instances import InstanceShape
from fleetinfer.errors import ConfigError

HOURS_PER_MONTH = 730.0
FAMILIES = ("modern-x86", "older-x86", "graviton", "gpu", "inferentia")


@dataclass(frozen=True, slots=True)
class Band:
    """An interruption-frequency band of the Spot Instance Advisor."""

    name: str
    monthly_interruption: float
    on_demand_fallback: float

    @property
    def interruptions_per_hour(self) -> float:
        return -math.log(1.0 - self.monthly_interruption) / HOURS_PER_MONTH


@dataclass(frozen=True, slots=True)
class InstanceType:
    """A machine shape with its prices and spot figures per region."""

    name: str
    vcpu: int
    memory_gib: float
    arch: str
    family: str
    cpu: str
    features: tuple[str, ...]
    accelerators: int
    accelerator: str
    usd_per_hour: Mapping[str, float]
    spot_discount: Mapping[str, float]
    interruption_band: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Offer:
    """One instance type in one region: what it is, what it costs, how often spot is taken back."""

    instance: InstanceType
    region: str
    on_demand_usd_per_hour: float
    spot_usd_per_hour: float
    band: Band

    @property
    def name(self) -> str:
        return self.instance.name

    def shape(self, usd_per_hour: float | None = None) -> InstanceShape:
        """The shape `fleetinfer.bench.projection` projects onto."""
        return InstanceShape(
            name=self.name,
            vcpu=self.instance.vcpu,
            memory_gib=self.instance.memory_gib,
            usd_per_hour=self.on_demand_usd_per_hour if usd_per_hour is None else usd_per_hour,
            arch=self.instance.arch,
            gpus=self.instance.accelerators,
            gpu=self.instance.accelerator,
        )


@dataclass(frozen=True, slots=True)
class Catalog:
    as_of: str
    sources: tuple[str, ...]
    bands: Mapping[str, Band]
    types: Mapping[str, InstanceType]
    path: str

    @property
    def regions(self) -> list[str]:
        return sorted({r for t in self.types.values() for r in t.usd_per_hour})

    def offers(self, region: str) -> list[Offer]:
        """Every type priced in `region`; a region the catalog lacks is a ConfigError."""
        offers = [self._offer(t, region) for t in self.types.values() if region in t.usd_per_hour]
        if not offers:
            raise ConfigError(
                f"the catalog {self.path} (as of {self.as_of}) has no prices for region "
                f"{region!r}: it covers {self.regions}; pick one of those with --region, or run "
                f"`fleetinfer catalog refresh --region {region}` to add it"
            )
        return offers

    def offer(self, name: str, region: str) -> Offer:
        if name not in self.types:
            raise ConfigError(
                f"unknown instance type {name!r}: the catalog has {sorted(self.types)}"
            )
        return next(o for o in self.offers(region) if o.name == name)

    def _offer(self, instance: InstanceType, region: str) -> Offer:
        on_demand = instance.usd_per_hour[region]
        discount = instance.spot_discount.get(region, 0.0)
        band = self.bands[instance.interruption_band.get(region, ">20%")]
        return Offer(instance, region, on_demand, on_demand * (1.0 - discount), band)


def builtin_catalog_text() -> str:
    return resources.files("fleetinfer.plan").joinpath("catalog.toml").read_text("utf-8")


def load_catalog(path: Path | None = None) -> Catalog:
    """The shipped catalog, or a file of the same layout (TOML, or JSON from `catalog refresh`)."""
    where = "fleetinfer/plan/catalog.toml" if path is None else str(path)
    try:
        if path is None:
            document = tomllib.loads(builtin_catalog_text())
        else:
            text = path.read_text(encoding="utf-8")
            document = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        return parse_catalog(document, where)
    except (OSError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read the catalog: {exc}") from exc


def parse_catalog(document: Mapping[str, Any], where: str) -> Catalog:
    try:
        bands = {name: _band(name, entry) for name, entry in document["bands"].items()}
        types = {name: _instance(name, entry) for name, entry in document["types"].items()}
        meta = document["catalog"]
        catalog = Catalog(
            as_of=str(meta["as_of"]),
            sources=tuple(str(s) for s in meta.get("sources", ())),
            bands=bands,
            types=types,
            path=where,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"{where}: expected [catalog] as_of, [bands.<name>] and [types.<name>] tables with "
            f"vcpu, memory_gib, arch, family, cpu, usd_per_hour, spot_discount and "
            f"interruption_band: {exc!r}"
        ) from exc
    _check_bands(catalog)
    return catalog


def _band(name: str, entry: Mapping[str, Any]) -> Band:
    return Band(name, float(entry["monthly_interruption"]), float(entry["on_demand_fallback"]))


def _instance(name: str, entry: Mapping[str, Any]) -> InstanceType:
    family = str(entry["family"])
    if family not in FAMILIES:
        raise ValueError(f"{name}: family {family!r} is not one of {FAMILIES}")
    return InstanceType(
        name=name,
        vcpu=int(entry["vcpu"]),
        memory_gib=float(entry["memory_gib"]),
        arch=str(entry["arch"]),
        family=family,
        cpu=str(entry["cpu"]),
        features=tuple(str(f) for f in entry.get("features", ())),
        accelerators=int(entry.get("accelerators", 0)),
        accelerator=str(entry.get("accelerator", "")),
        usd_per_hour={str(r): float(p) for r, p in entry["usd_per_hour"].items()},
        spot_discount={str(r): float(d) for r, d in entry.get("spot_discount", {}).items()},
        interruption_band={str(r): str(b) for r, b in entry.get("interruption_band", {}).items()},
    )


def _check_bands(catalog: Catalog) -> None:
    for instance in catalog.types.values():
        for region, band in instance.interruption_band.items():
            if band not in catalog.bands:
                raise ConfigError(
                    f"{catalog.path}: {instance.name} in {region} names interruption band "
                    f"{band!r}; the catalog defines {sorted(catalog.bands)}"
                )


def catalog_to_json(catalog: Catalog) -> dict[str, Any]:
    """The catalog in its file layout (what `catalog refresh` writes)."""
    return {
        "catalog": {"as_of": catalog.as_of, "sources": list(catalog.sources)},
        "bands": {
            b.name: {"monthly_interruption": b.monthly_interruption,
                     "on_demand_fallback": b.on_demand_fallback}
            for b in catalog.bands.values()
        },
        "types": {t.name: _instance_json(t) for t in catalog.types.values()},
    }  # fmt: skip


def _instance_json(t: InstanceType) -> dict[str, Any]:
    return {
        "vcpu": t.vcpu,
        "memory_gib": t.memory_gib,
        "arch": t.arch,
        "family": t.family,
        "cpu": t.cpu,
        "features": list(t.features),
        "accelerators": t.accelerators,
        "accelerator": t.accelerator,
        "usd_per_hour": dict(t.usd_per_hour),
        "spot_discount": dict(t.spot_discount),
        "interruption_band": dict(t.interruption_band),
    }
