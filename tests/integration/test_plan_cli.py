"""`fleetinfer plan`, `simulate` and `catalog refresh` as a user runs them (moto for AWS)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fleetinfer.cli.app import app
from fleetinfer.cli.common import ExitCode
from fleetinfer.plan.catalog import load_catalog
from fleetinfer.plan.refresh import parse_on_demand_usd, price_filters, spot_usd_by_type

ROOT = Path(__file__).resolve().parents[2]
HEAVY = str(ROOT / "examples/plan/cdnet-h.profile.json")


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_plan_writes_json_and_a_chart_that_simulate_reads(tmp_path: Path) -> None:
    code, out, _ = _run("plan", "--profile", HEAVY, "--backlog", "300000000", "--deadline", "6h",
                        "--out", str(tmp_path), "--json")  # fmt: skip
    assert code == ExitCode.OK
    document = json.loads(out)
    assert document["fleet"]["completion_h"] <= 6.0
    assert (tmp_path / "plan.png").stat().st_size > 0
    code, out, _ = _run("simulate", "--plan", str(tmp_path / "plan.json"), "--arrivals", "1000",
                        "--hours", "8", "--seed", "5", "--json")  # fmt: skip
    assert code == ExitCode.OK
    result = json.loads(out)
    assert result["tasks_done"] > 300_000_000
    assert result["cost_usd"] > 0
    assert result["latency_p95_s"] > 0


def test_plan_table_lists_the_task_on_every_cpu_type_in_every_mode() -> None:
    code, out, _ = _run("plan", "--profile", HEAVY, "--table", "--mode", "all", "--json")
    assert code == ExitCode.OK
    rows = json.loads(out)
    assert {r["family"] for r in rows} == {"modern-x86", "older-x86", "graviton"}
    assert {r["mode"] for r in rows} == {"isolated-per-task", "isolated", "shared", "triton"}
    assert all(r["workers"] > 0 and r["bound_by"] in ("cores", "memory") for r in rows)


def test_an_unmeetable_deadline_exits_with_the_config_code_and_what_would_meet_it() -> None:
    code, _, err = _run("plan", "--profile", HEAVY, "--backlog", "2000000000", "--deadline", "1h",
                        "--max-nodes", "100")  # fmt: skip
    assert code == ExitCode.CONFIG
    assert "cannot be met" in err
    assert "What would meet it" in err


def test_a_region_the_catalog_lacks_exits_with_the_config_code() -> None:
    code, _, err = _run("plan", "--profile", HEAVY, "--backlog", "10", "--region", "mars-1")
    assert code == ExitCode.CONFIG
    assert "mars-1" in err


def test_a_profile_from_a_failed_bench_exits_with_the_input_code(tmp_path: Path) -> None:
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"modes": {"shared": {"error": "no task succeeded"}}}))
    code, _, err = _run("plan", "--profile", str(bench), "--backlog", "10")
    assert code == ExitCode.INPUT
    assert "bench failed" in err


def test_a_bad_deadline_and_a_bad_plan_file_are_input_errors(tmp_path: Path) -> None:
    code, _, err = _run("plan", "--profile", HEAVY, "--backlog", "10", "--deadline", "soon")
    assert code == ExitCode.INPUT
    assert "6h" in err
    (tmp_path / "plan.json").write_text("{}")
    code, _, err = _run("simulate", "--plan", str(tmp_path / "plan.json"))
    assert code == ExitCode.INPUT
    assert "fleetinfer plan" in err


def test_price_list_answers_translate_to_an_hourly_usd_price() -> None:
    product = {
        "product": {"attributes": {"instanceType": "r8g.8xlarge"}},
        "terms": {"OnDemand": {"X.Y": {"priceDimensions": {"X.Y.Z": {
            "unit": "Hrs", "pricePerUnit": {"USD": "1.8854400000"}}}}}},
    }  # fmt: skip
    assert parse_on_demand_usd([json.dumps(product)]) == pytest.approx(1.88544)
    assert parse_on_demand_usd([]) is None
    fields = {f["Field"]: f["Value"] for f in price_filters("r8g.8xlarge", "eu-west-1")}
    assert fields["regionCode"] == "eu-west-1"
    assert fields["operatingSystem"] == "Linux"
    history = [
        {
            "InstanceType": "m5.8xlarge",
            "AvailabilityZone": "a",
            "SpotPrice": "0.5",
            "Timestamp": "1",
        },
        {
            "InstanceType": "m5.8xlarge",
            "AvailabilityZone": "a",
            "SpotPrice": "0.7",
            "Timestamp": "2",
        },
        {
            "InstanceType": "m5.8xlarge",
            "AvailabilityZone": "b",
            "SpotPrice": "0.9",
            "Timestamp": "1",
        },
    ]
    assert spot_usd_by_type(history) == {"m5.8xlarge": pytest.approx(0.8)}


def test_catalog_refresh_reads_spot_history_from_moto_and_keeps_what_it_cannot_read(
    moto_endpoint: str, tmp_path: Path
) -> None:
    """moto has no Price List API: on-demand prices stay as shipped, and the note says so."""
    out = tmp_path / "catalog.json"
    code, stdout, _ = _run("catalog", "refresh", "--region", "us-east-1", "--endpoint-url",
                           moto_endpoint, "--out", str(out), "--json")  # fmt: skip
    assert code == ExitCode.OK
    report = json.loads(stdout)
    assert report["spot_updated"] > 0
    assert report["on_demand_updated"] == 0
    assert "kept as shipped" in report["problems"][0]
    fresh, shipped = load_catalog(out), load_catalog()
    assert fresh.as_of != shipped.as_of
    refreshed = [t for t in fresh.types.values()
                 if t.spot_discount["us-east-1"] != shipped.types[t.name].spot_discount["us-east-1"]]  # fmt: skip
    assert refreshed
    offer = fresh.offer(refreshed[0].name, "us-east-1")
    assert offer.spot_usd_per_hour == pytest.approx(0.00001)  # moto's spot price for every type
    assert offer.on_demand_usd_per_hour == shipped.types[offer.name].usd_per_hour["us-east-1"]


def _validate(bench: Path, mode: str) -> dict[str, Any]:
    """`plan --validate --json` on the tiny app's six payloads: its document."""
    code, out, err = _run("plan", "--profile", str(bench), "--validate", "--mode", mode,
                          "--target", "examples.tinyapp.tasks:score", "--models",
                          str(ROOT / "examples/tinyapp/models"), "--payloads",
                          str(ROOT / "examples/tinyapp/payloads.jsonl"), "--tasks", "6", "--json")  # fmt: skip
    assert code == ExitCode.OK, err
    document: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return document


def test_validate_prints_the_projection_for_this_machine_beside_a_node_run(tmp_path: Path) -> None:
    footprint = {
        "worker_mib": 60.0,
        "node_fixed_mib": 50.0,
        "task_wall_s": 0.05,
        "task_cpu_s": 0.05,
    }
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({
        "bench": {"target": "examples.tinyapp.tasks:score", "workers": 1},
        "modes": {"isolated": {"projection": {"footprint": footprint}, "first_task_s": 1.0}},
    }))  # fmt: skip
    document = _validate(bench, "isolated")
    assert document["measured"]["tasks"] == 6
    assert document["measured"]["workers"] == 1
    assert document["projection"]["instance"] == "this-machine"
    assert document["projection_node_sized"]["tasks_per_min"] == pytest.approx(1200.0)
    assert document["measured_over_projected"] > 0


def test_validate_runs_the_node_with_the_model_server_laid_out_as_the_bench_measured(
    tmp_path: Path,
) -> None:
    footprint = {"worker_mib": 60.0, "node_fixed_mib": 50.0, "task_wall_s": 0.05,
                 "task_cpu_s": 0.05}  # fmt: skip
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({
        "bench": {"target": "examples.tinyapp.tasks:score", "workers": 2,
                  "server_instances": 2, "server_threads": 1},
        "modes": {"shared": {"projection": {"footprint": footprint}, "first_task_s": 1.0}},
    }))  # fmt: skip
    document = _validate(bench, "shared")
    assert document["measured"]["tasks"] == 6
    assert document["measured"]["server"] == "2 instance(s) x 1 thread(s)"


def test_catalog_refresh_without_credentials_exits_with_the_config_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, _, err = _run("catalog", "refresh", "--out", str(tmp_path / "c.json"))
    assert code == ExitCode.CONFIG
    assert "needs AWS credentials" in err
    assert not (tmp_path / "c.json").exists()
