"""`profile_model` / `write_profile` on a tiny conv repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetinfer.compile.calibration import ArraySource, ZeroSource
from fleetinfer.compile.compiler import CompileRequest, compile_model
from fleetinfer.compile.profile import Constraints, ProfileSpace, profile_model, write_profile
from fleetinfer.errors import ConfigError, NoFeasibleProfileError
from fleetinfer.server.repository import ModelRepository
from tests.helpers.tiny_conv import tiny_conv_inputs, tiny_conv_repository

QUICK = ProfileSpace(
    batch_sizes=(1, 4), intra_op_threads=(1,), rounds=1, duration_s=0.05, measure_memory=False
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tiny_conv_repository(tmp_path / "models")


def test_profile_measures_every_configuration_plus_the_runtime_default(repo: Path) -> None:
    report = profile_model(repo, "tinyconv", QUICK)
    keys = {r.key for r in report.rows}
    assert keys == {(1, 1, 1, 1), (1, 4, 1, 1), (1, 1, 0, 1)}
    assert report.default.key == (1, 1, 0, 1)
    assert report.best.samples_per_s == max(r.samples_per_s for r in report.rows)
    assert all(r.p99_latency_ms >= r.p50_latency_ms > 0 for r in report.rows)


def test_profile_measures_memory_in_a_fresh_process(repo: Path) -> None:
    space = ProfileSpace(batch_sizes=(1,), intra_op_threads=(1,), rounds=1, duration_s=0.05)
    report = profile_model(repo, "tinyconv", space)
    assert all(r.memory_mb is not None and r.memory_mb > 0 for r in report.rows)


def test_an_impossible_latency_constraint_is_a_typed_error(repo: Path) -> None:
    with pytest.raises(NoFeasibleProfileError, match="lowest p99"):
        profile_model(repo, "tinyconv", QUICK, Constraints(max_p99_ms=1e-6))


def test_a_version_that_failed_its_gate_is_never_picked(repo: Path) -> None:
    config = ModelRepository(repo).config("tinyconv")
    request = CompileRequest(repository=repo, model="tinyconv", precision="int8", measure=False)
    failed = compile_model(request, calibration=ZeroSource(config))
    assert failed.manifest.accuracy.gate == "failed"
    report = profile_model(repo, "tinyconv", QUICK)
    assert all(not r.feasible for r in report.rows if r.version == failed.version)
    assert report.best.version == 1


def test_precisions_are_the_versions_on_disk(repo: Path) -> None:
    request = CompileRequest(
        repository=repo, model="tinyconv", precision="int8", measure=False, threshold=1.0
    )
    compile_model(request, calibration=ArraySource(tiny_conv_inputs(8)))
    report = profile_model(repo, "tinyconv", QUICK)
    assert {r.precision for r in report.rows} == {"fp32", "int8"}


def test_write_profile_sets_threads_instances_and_batch(repo: Path) -> None:
    report = profile_model(repo, "tinyconv", QUICK)
    write_profile(repo, "tinyconv", report.best)
    config = ModelRepository(repo).config("tinyconv")
    assert config.runtime.intra_op_threads == report.best.intra_op_threads
    assert config.batching.preferred_batch_sizes == (report.best.batch_size,)


def test_an_empty_sweep_is_refused() -> None:
    with pytest.raises(ConfigError, match="batch_sizes"):
        ProfileSpace(batch_sizes=())


def test_profile_of_unknown_versions_names_the_ones_on_disk(repo: Path) -> None:
    with pytest.raises(ConfigError, match="has \\[1\\]"):
        profile_model(repo, "tinyconv", ProfileSpace(versions=(7,)))


def test_instances_run_in_parallel_sessions(repo: Path) -> None:
    space = ProfileSpace(
        batch_sizes=(1,),
        intra_op_threads=(1,),
        instances=(1, 2),
        rounds=1,
        duration_s=0.05,
        measure_memory=False,
    )
    report = profile_model(repo, "tinyconv", space)
    assert {r.instances for r in report.rows} == {1, 2}
