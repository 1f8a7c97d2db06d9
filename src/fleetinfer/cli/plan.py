"""`fleetinfer plan`, `fleetinfer simulate`, `fleetinfer catalog refresh`: fleets by tasks per dollar.

fleetinfer plan --profile bench.json --backlog 2000000 --deadline 6h [--budget 500] [--region R]
fleetinfer plan --profile bench.json --table            (the task on every instance type)
fleetinfer plan --profile bench.json --validate --target APP:TASK --payloads FILE [--models M]
fleetinfer simulate --plan plan.json --arrivals 600|FILE --hours 24 --seed 1
fleetinfer catalog refresh --region us-east-1 [--out catalog.json]
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fleetinfer.cli.common import JsonOption, exit_on_error, print_json, stderr, stdout
from fleetinfer.errors import InputError, MissingExtraError

DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(h|m|s|d)?\s*$")
UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

ProfileOption = Annotated[
    Path, typer.Option("--profile", help="`fleetinfer bench --json` output (or its bench.json).")
]
CatalogOption = Annotated[
    Path | None,
    typer.Option("--catalog", envvar="FLEETINFER_CATALOG", help="Catalog file (default: shipped)."),
]


def parse_duration_s(text: str) -> float:
    """'6h', '90m', '3600s', '1.5d' or plain seconds."""
    match = DURATION.match(text)
    if not match:
        raise InputError(f"expected a duration like 6h, 90m or 3600s, got {text!r}")
    return float(match.group(1)) * UNIT_S[match.group(2) or "s"]


def _pool_caps(values: list[str]) -> dict[str, int]:
    caps = {}
    for value in values:
        name, _, count = value.partition("=")
        if not count.isdigit():
            raise InputError(f"--pool-cap expects TYPE=NODES, got {value!r}")
        caps[name.strip()] = int(count)
    return caps


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def plan(
    profile: ProfileOption,
    backlog: Annotated[int, typer.Option("--backlog", min=0, help="Tasks to finish.")] = 0,
    deadline: Annotated[str, typer.Option("--deadline", help="Finish within: 6h, 90m…")] = "6h",
    budget: Annotated[float | None, typer.Option("--budget", help="Most $ to spend.")] = None,
    region: Annotated[str, typer.Option("--region", help="Catalog region.")] = "us-east-1",
    catalog: CatalogOption = None,
    mode: Annotated[
        str, typer.Option("--mode", help="Serving mode of the profile (--table: or all).")
    ] = "shared",
    min_pools: Annotated[int, typer.Option("--min-pools", min=1, help="Pools at least.")] = 3,
    max_share: Annotated[
        float, typer.Option("--max-share", min=0.01, max=1.0, help="Most throughput per pool.")
    ] = 0.4,
    max_nodes: Annotated[int, typer.Option("--max-nodes", min=1, help="Fleet ceiling.")] = 5000,
    pool_cap: Annotated[
        list[str] | None, typer.Option("--pool-cap", help="TYPE=NODES: spot capacity of a pool.")
    ] = None,
    families: Annotated[
        str,
        typer.Option(
            "--families", help="Families to consider (gpu, inferentia need a model built for them)."
        ),
    ] = "modern-x86,older-x86,graviton",
    types: Annotated[str, typer.Option("--types", help="Only these types (comma-separated).")] = "",
    spot: Annotated[bool, typer.Option("--spot/--no-spot", help="Allow spot pools.")] = True,
    visibility_timeout_s: Annotated[
        float, typer.Option("--visibility-timeout-s", help="Queue visibility timeout.")
    ] = 300.0,
    out: Annotated[Path, typer.Option("--out", help="Folder for plan.json and plan.png.")] = Path(
        ".fleetinfer/plan"
    ),
    table_only: Annotated[
        bool, typer.Option("--table", help="Print the task's profile on every type and stop.")
    ] = False,
    validate_run: Annotated[
        bool, typer.Option("--validate", help="Projection for this machine vs a node run here.")
    ] = False,
    target: Annotated[str | None, typer.Option("--target", help="--validate: APP:TASK.")] = None,
    payloads: Annotated[Path | None, typer.Option("--payloads", help="--validate: JSONL.")] = None,
    models: Annotated[Path | None, typer.Option("--models", help="--validate: models.")] = None,
    tasks: Annotated[int, typer.Option("--tasks", min=1, help="--validate: tasks to run.")] = 32,
    workers: Annotated[int | None, typer.Option("--workers", help="--validate: workers.")] = None,
    host_class: Annotated[
        str | None,
        typer.Option("--host-class", help="Class of the bench's host (default: this one's)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Pick the cheapest diversified instance mix that finishes BACKLOG tasks by the deadline."""
    from fleetinfer.plan.catalog import load_catalog
    from fleetinfer.plan.profile import load_profile, node_profiles

    with exit_on_error():
        task = load_profile(profile, host_class=host_class)
        if validate_run:
            _validate(task, mode, target, payloads, models, tasks, workers, as_json)
            return
        book = load_catalog(catalog)
        offers = book.offers(region)
        if table_only:
            modes = sorted(task.modes) if mode == "all" else [mode]
            _print_profile_table([n for m in modes for n in node_profiles(
                task, offers, m, families=_split(families), types=_split(types))], as_json)  # fmt: skip
            return
        nodes = node_profiles(task, offers, mode, families=_split(families), types=_split(types))
        if backlog <= 0:
            raise InputError("--backlog: expected the number of tasks to finish (> 0), got 0")
        _plan(book, task, nodes, mode=mode, backlog=backlog, deadline_s=parse_duration_s(deadline),
              budget=budget, min_pools=min_pools, max_share=max_share, max_nodes=max_nodes,
              caps=_pool_caps(pool_cap or []), spot=spot, visibility_timeout_s=visibility_timeout_s,
              out=out, as_json=as_json)  # fmt: skip


def _plan(book: Any, task: Any, nodes: Any, *, mode: str, out: Path, as_json: bool, backlog: int,
          deadline_s: float, budget: float | None, min_pools: int, max_share: float,
          max_nodes: int, caps: dict[str, int], spot: bool, visibility_timeout_s: float) -> None:  # fmt: skip
    from fleetinfer.plan.planner import PlanRequest, make_plan, plan_to_json, single_type_plans

    request = PlanRequest(backlog=backlog, deadline_s=deadline_s, budget_usd=budget,
                          min_pools=min_pools, max_share=max_share, max_nodes=max_nodes,
                          pool_caps=caps, spot=spot, visibility_timeout_s=visibility_timeout_s)  # fmt: skip
    chosen = make_plan(nodes, request)
    alternatives = single_type_plans(nodes, request)
    document = plan_to_json(
        chosen,
        profile={"source": task.source, "target": task.target, "mode": mode,
                 "host": task.host.klass, "host_cpu": task.host.cpu},
        catalog={"as_of": book.as_of, "path": book.path},
        alternatives=[{"instance": p.allocations[0].pool.name, "purchase": p.allocations[0].pool.purchase,
                       "nodes": p.nodes, "completion_h": round(p.completion_s / 3600, 3),
                       "cost_usd": round(p.cost_usd, 2)} for p in alternatives[:8]],
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    _chart(chosen, alternatives[:6], out / "plan.png", document)
    (out / "plan.json").write_text(json.dumps(document, indent=2) + os.linesep, encoding="utf-8")
    if as_json:
        print_json(document)
        return
    stdout.print(_plan_table(document))
    stdout.print(
        f"written: {out / 'plan.json'}"
        + ("" if "chart_error" in document else f", {out / 'plan.png'}")
    )


def _chart(chosen: Any, alternatives: Any, path: Path, document: dict[str, Any]) -> None:
    from fleetinfer.plan.chart import write_plan_chart

    try:
        write_plan_chart(chosen, alternatives, path)
    except MissingExtraError as exc:
        document["chart_error"] = str(exc)
        stderr.print(f"no chart: {exc}", soft_wrap=True)


def _plan_table(document: dict[str, Any]) -> Table:
    fleet = document["fleet"]
    table = Table(
        title=f"{document['request']['backlog']:,} tasks in {fleet['completion_h']:.2f} h "
        f"(deadline {document['request']['deadline_s'] / 3600:.2f} h): {fleet['nodes']:,} nodes, "
        f"${fleet['cost_usd']:,.2f} expected, {fleet['tasks_per_usd']:,.0f} tasks/$, "
        f"{fleet['expected_interruptions']:.1f} interruptions expected"
    )
    for column in ("pool", "purchase", "nodes", "share", "workers (bound)", "tasks/min/node",
                   "$/h/node", "tasks/$", "band"):  # fmt: skip
        table.add_column(column, justify="left" if column == "pool" else "right")
    for p in document["pools"]:
        table.add_row(p["instance"], p["purchase"], f"{p['nodes']:,}", f"{p['share']:.0%}",
                      f"{p['workers']} ({p['bound_by']})", f"{p['expected_tasks_per_min']:,.1f}",
                      f"{p['expected_usd_per_hour']:.3f}", f"{1 / p['usd_per_task']:,.0f}",
                      p["interruption_band"])  # fmt: skip
    alternatives = ", ".join(
        f"{a['instance']} ${a['cost_usd']:,.0f}" for a in document["alternatives"][:4]
    )
    table.caption = (
        f"single-type alternatives: {alternatives}; catalog as of {document['catalog']['as_of']}"
    )
    return table


def _print_profile_table(nodes: Any, as_json: bool) -> None:
    rows = [n.to_json() for n in sorted(nodes, key=lambda n: (n.mode, -n.tasks_per_usd_spot))]
    if as_json:
        print_json(rows)
        return
    table = Table(title="the task on each instance type (sorted by spot tasks/$)")
    for column in (
        "mode",
        "instance",
        "family",
        "speed",
        "workers (bound)",
        "tasks/min",
        "tasks/$ od",
        "tasks/$ spot",
        "band",
    ):
        table.add_column(
            column, justify="left" if column in ("mode", "instance", "family") else "right"
        )
    for r in rows:
        table.add_row(r["mode"], r["instance"], r["family"], f"{r['speed']:.2f}", f"{r['workers']} ({r['bound_by']})",
                      f"{r['tasks_per_min']:,.1f}", f"{r['tasks_per_usd_on_demand']:,.0f}",
                      f"{r['tasks_per_usd_spot']:,.0f}", r["interruption_band"])  # fmt: skip
    stdout.print(table)


def _validate(task: Any, mode: str, target: str | None, payloads: Path | None,
              models: Path | None, tasks: int, workers: int | None, as_json: bool) -> None:  # fmt: skip
    from fleetinfer.bench.payloads import load_payloads
    from fleetinfer.cli.paths import add_working_directory_to_path
    from fleetinfer.plan.validate import validate

    if target is None or payloads is None:
        raise InputError(
            "--validate needs --target APP:TASK and --payloads FILE (the bench's task)"
        )
    add_working_directory_to_path()
    with stderr.status("running a node on this machine"):
        result = validate(task, mode=mode, target=target, payloads=load_payloads(payloads, tasks),
                          models=models, workers=workers)  # fmt: skip
    document = result.to_json() | {"mode": mode, "profile": task.source, "host": task.host.cpu}
    if as_json:
        print_json(document)
        return
    p, m, n = document["projection"], document["measured"], document["projection_node_sized"]
    stdout.print(
        f"projection for this machine ({mode}): {n['tasks_per_min']:.1f} tasks/min with the node's "
        f"{n['workers']} workers (bench formula: {p['tasks_per_min']:.1f} with {p['workers']}, "
        f"{p['bound_by']}-bound)\n"
        f"measured `fleetinfer run`: {m['tasks_per_min_steady'] or float('nan'):.1f} tasks/min all "
        f"busy, {m['tasks_per_min']:.1f} whole run ({m['tasks']} tasks, {m['duration_s']:.1f} s"
        + (f"; model server: {m['server']}" if m["server"] else "")
        + ")\n"
        f"measured ÷ projected: {document['measured_over_projected']:.3f}\n"
        f"the node obtained {m['cores_obtained']:.2f} cores (load {m['loadavg_1m']:.1f}); "
        f"projection at those cores: {document['projection_at_cores_obtained']:.1f} tasks/min "
        f"(measured ÷ it: {document['measured_over_projection_at_cores_obtained'] or float('nan'):.3f})"
    )


def simulate(
    plan_file: Annotated[
        Path, typer.Option("--plan", help="`fleetinfer plan` output (plan.json).")
    ],
    arrivals: Annotated[
        str,
        typer.Option("--arrivals", help="tasks/min, or a file of `start_s,tasks_per_min` lines."),
    ] = "0",
    hours: Annotated[float, typer.Option("--hours", min=0.01, help="Simulated hours.")] = 24.0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    backlog: Annotated[
        int | None,
        typer.Option("--backlog", min=0, help="Tasks queued at the start (default: the plan's)."),
    ] = None,
    step_s: Annotated[float, typer.Option("--step-s", min=0.1, help="Time step.")] = 10.0,
    floor: Annotated[
        int | None, typer.Option("--floor", min=0, help="Policy floor (nodes).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Simulate a plan's fleet: arrivals, scaling, spot interruptions, redelivery, cost."""
    from fleetinfer.plan import simulate as sim

    with exit_on_error():
        document = _read_plan(plan_file)
        text = Path(arrivals).read_text(encoding="utf-8") if Path(arrivals).is_file() else arrivals
        overrides = {} if floor is None else {"floor_nodes": floor}
        config = sim.config_from_plan(
            document, hours=hours, seed=seed, step_s=step_s,
            backlog=float(document["request"]["backlog"] if backlog is None else backlog),
            arrivals_per_min=tuple(sim.parse_arrivals(text)),
        )  # fmt: skip
        result = sim.simulate(
            sim.pools_from_plan(document), sim.policy_from_plan(document, **overrides), config
        )
    output = result.to_json()
    if as_json:
        print_json(output)
        return
    table = Table(title=f"{hours:g} h simulated, seed {seed}")
    table.add_column("")
    table.add_column("value", justify="right")
    for key in (
        "tasks_arrived",
        "tasks_done",
        "tasks_left",
        "latency_p50_s",
        "latency_p95_s",
        "cost_usd",
        "tasks_per_usd",
        "interruptions_survived",
        "tasks_redelivered",
        "peak_nodes",
        "backlog_cleared_h",
    ):
        value = output[key]
        table.add_row(key, "—" if value is None else f"{value:,}")
    stdout.print(table)


def _read_plan(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{path}: expected the plan.json that `fleetinfer plan` writes: {exc}"
        ) from exc
    if not isinstance(document, dict) or "pools" not in document or "request" not in document:
        raise InputError(
            f"{path}: expected the plan.json that `fleetinfer plan` writes (pools, request)"
        )
    return document


catalog_app = typer.Typer(
    help="The instance catalog: types, prices, spot figures.", no_args_is_help=True
)


@catalog_app.command("refresh")
def catalog_refresh(
    region: Annotated[str, typer.Option("--region", help="Region to refresh.")] = "us-east-1",
    catalog: CatalogOption = None,
    out: Annotated[Path, typer.Option("--out", help="Refreshed catalog (JSON).")] = Path(
        ".fleetinfer/catalog.json"
    ),
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="AWS endpoint (a local emulator).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Read today's on-demand prices and spot discounts through boto3; write a catalog file."""
    from fleetinfer.plan.catalog import catalog_to_json, load_catalog
    from fleetinfer.plan.refresh import refresh_catalog

    with exit_on_error():
        fresh, report = refresh_catalog(load_catalog(catalog), region, endpoint_url=endpoint_url)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(catalog_to_json(fresh), indent=2) + os.linesep, encoding="utf-8")
    document = report.to_json() | {"out": str(out), "as_of": fresh.as_of}
    if as_json:
        print_json(document)
        return
    stdout.print(
        f"{out}: {region} on-demand prices for {document['on_demand_updated']} types, spot "
        f"discounts for {document['spot_updated']}; use it with --catalog {out}"
    )
    for problem in report.problems:
        stderr.print(f"note: {problem}", soft_wrap=True)
