"""`fleetinfer catalog refresh`: today's prices for one region through boto3.

On-demand $/h comes from the AWS Price List API (`pricing.get_products`, Linux, shared tenancy, no
pre-installed software, capacity status "Used"); the spot discount from the EC2 spot price history
(`ec2.describe_spot_price_history`, Linux/UNIX, the last day: per type the median over availability
zones of each zone's latest price). Interruption bands are not in any API (the Spot Instance Advisor
publishes them as a web page) and stay as shipped. What could not be read is kept and listed.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from fleetinfer.aws import import_boto3
from fleetinfer.errors import ConfigError, TransientError
from fleetinfer.plan.catalog import Catalog, InstanceType

PRICING_REGION = "us-east-1"  # the Price List API answers from us-east-1 (and ap-south-1)


@dataclass(slots=True)
class RefreshReport:
    region: str
    on_demand_updated: list[str] = field(default_factory=list)
    spot_updated: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "on_demand_updated": len(self.on_demand_updated),
            "spot_updated": len(self.spot_updated),
            "problems": self.problems,
        }


def price_filters(instance_type: str, region: str) -> list[dict[str, str]]:
    """The `get_products` filters that select one type's Linux on-demand price in one region."""
    wanted = {
        "instanceType": instance_type,
        "regionCode": region,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in wanted.items()]


def parse_on_demand_usd(price_list: Iterable[str]) -> float | None:
    """The hourly USD on-demand price in a `get_products` PriceList (JSON strings), or None."""
    prices = []
    for item in price_list:
        product = json.loads(item)
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                usd = float(dimension.get("pricePerUnit", {}).get("USD", "0") or 0)
                if dimension.get("unit") == "Hrs" and usd > 0:
                    prices.append(usd)
    return min(prices) if prices else None


def spot_usd_by_type(history: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Per type, the median over zones of each zone's latest spot price."""
    latest: dict[tuple[str, str], tuple[Any, float]] = {}
    for entry in history:
        key = (str(entry["InstanceType"]), str(entry.get("AvailabilityZone", "")))
        stamp, price = entry.get("Timestamp"), float(entry["SpotPrice"])
        if key not in latest or str(stamp) > str(latest[key][0]):
            latest[key] = (stamp, price)
    by_type: dict[str, list[float]] = {}
    for (name, _zone), (_stamp, price) in latest.items():
        by_type.setdefault(name, []).append(price)
    return {name: statistics.median(prices) for name, prices in by_type.items()}


def refresh_catalog(
    catalog: Catalog, region: str, *, endpoint_url: str | None = None, today: dt.date | None = None
) -> tuple[Catalog, RefreshReport]:
    """A copy of `catalog` with `region`'s on-demand prices and spot discounts read today."""
    boto3 = import_boto3("fleetinfer catalog refresh")
    if boto3.Session().get_credentials() is None:
        raise ConfigError(
            "catalog refresh needs AWS credentials (environment, ~/.aws, or an instance role): "
            "none found; the shipped catalog stays in use"
        )
    report = RefreshReport(region)
    on_demand = _on_demand(boto3, catalog, region, endpoint_url, report)
    spot = _spot(boto3, catalog, region, endpoint_url, report)
    types = {
        name: _updated(t, region, on_demand.get(name), spot.get(name))
        for name, t in catalog.types.items()
    }
    date = (today or dt.datetime.now(dt.UTC).date()).isoformat()
    note = (f"refreshed {date} for {region}: on-demand from the AWS Price List API "
            f"({len(report.on_demand_updated)} types), spot discount from the EC2 spot price "
            f"history ({len(report.spot_updated)} types)")  # fmt: skip
    return replace(catalog, as_of=date, sources=(*catalog.sources, note), types=types), report


def _on_demand(
    boto3: Any, catalog: Catalog, region: str, endpoint_url: str | None, report: RefreshReport
) -> dict[str, float]:
    client = boto3.client("pricing", region_name=PRICING_REGION, endpoint_url=endpoint_url)
    prices: dict[str, float] = {}
    for name in catalog.types:
        try:
            with translate_boto_errors("pricing.get_products"):
                answer = client.get_products(
                    ServiceCode="AmazonEC2", Filters=price_filters(name, region)
                )
        except (ConfigError, TransientError) as exc:
            report.problems.append(f"on-demand prices kept as shipped: {exc}")
            return prices
        usd = parse_on_demand_usd(answer.get("PriceList", []))
        if usd is not None:
            prices[name] = usd
            report.on_demand_updated.append(name)
    return prices


def _spot(
    boto3: Any, catalog: Catalog, region: str, endpoint_url: str | None, report: RefreshReport
) -> dict[str, float]:
    client = boto3.client("ec2", region_name=region, endpoint_url=endpoint_url)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    history: list[Mapping[str, Any]] = []
    try:
        with translate_boto_errors("ec2.describe_spot_price_history"):
            pages = client.get_paginator("describe_spot_price_history").paginate(
                InstanceTypes=sorted(catalog.types),
                ProductDescriptions=["Linux/UNIX"],
                StartTime=start,
            )
            for page in pages:
                history.extend(page.get("SpotPriceHistory", []))
    except (ConfigError, TransientError) as exc:
        report.problems.append(f"spot discounts kept as shipped: {exc}")
        return {}
    prices = spot_usd_by_type(history)
    report.spot_updated.extend(sorted(prices))
    return prices


def _updated(
    instance: InstanceType, region: str, on_demand: float | None, spot: float | None
) -> InstanceType:
    usd = dict(instance.usd_per_hour)
    discount = dict(instance.spot_discount)
    if on_demand is not None:
        usd[region] = on_demand
    if spot is not None and region in usd:
        discount[region] = max(0.0, 1.0 - spot / usd[region])
    return replace(instance, usd_per_hour=usd, spot_discount=discount)


@contextmanager
def translate_boto_errors(call: str) -> Iterator[None]:
    """botocore's errors as ours: credentials and refusals → ConfigError, network → Transient."""
    import botocore.exceptions as bx

    try:
        yield
    except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
        raise ConfigError(f"{call}: no usable AWS credentials: {exc}") from exc
    except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError) as exc:
        raise TransientError(f"{call}: AWS could not be reached, try again: {exc}") from exc
    except bx.ClientError as exc:
        raise ConfigError(f"{call} was refused: {exc}") from exc
