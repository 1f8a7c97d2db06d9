"""The segment pipeline end to end: generated segment files, the shipped model, real onnxruntime."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetinfer.client import InProcessModelClient
from fleetinfer.server.repository import ModelRepository, verify_artifact
from roadchange.evaluate import evaluate_directory
from roadchange.generate import generate_dataset
from roadchange.pipeline import (
    OnnxModel,
    check_segment,
    shipped_model_path,
    shipped_model_repository,
)
from roadchange.segfile import read_segment

SEED = 515151  # >= 100000: never a training seed


@pytest.fixture(scope="module")
def twenty_segments(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("segments")
    return generate_dataset(out, preset="default", segments=20, seed=SEED)


@pytest.fixture(scope="module")
def model() -> OnnxModel:
    return OnnxModel(shipped_model_path("cdnet"), threads=2)


def test_pipeline_decides_twenty_segments_with_batched_calls_and_mostly_right(
    twenty_segments: list[Path], model: OnnxModel
) -> None:
    right = 0
    for path in twenty_segments:
        segment = read_segment(path)
        decision = check_segment(path, model)
        assert decision.segment_id == segment.segment_id
        assert decision.windows >= segment.length_m // 16.0  # 400 m: 25 windows
        assert decision.model_calls == 1
        assert decision.changed == bool(decision.change_types)
        right += decision.changed == segment.label.changed
    assert right >= 18


def test_changed_decisions_locate_the_change_near_the_labelled_span(
    twenty_segments: list[Path], model: OnnxModel
) -> None:
    located = detected = 0
    for path in twenty_segments:
        segment = read_segment(path)
        decision = check_segment(segment, model)
        span = segment.label.change_span_m
        if decision.changed and span is not None:
            detected += 1
            located += any(
                a <= span[1] + 16 and b >= span[0] - 16 for a, b in decision.change_spans_m
            )
    assert detected > 0
    assert located >= 0.9 * detected


def test_a_fleetinfer_model_handle_gives_the_same_decisions_as_the_onnx_model(
    twenty_segments: list[Path], model: OnnxModel
) -> None:
    client = InProcessModelClient(shipped_model_repository(), intra_op_threads=2)
    handle = client.model("cdnet")
    for path in twenty_segments[:5]:
        a, b = check_segment(path, model), check_segment(path, handle)
        assert (a.changed, a.change_types, a.remap) == (b.changed, b.change_types, b.remap)
        assert a.score_logit == pytest.approx(b.score_logit, abs=1e-4)
    client.close()


@pytest.mark.parametrize("name", ["cdnet", "cdnet-l"])
def test_shipped_models_match_their_recorded_sha256(name: str) -> None:
    repository = ModelRepository(shipped_model_repository())
    verify_artifact(repository.resolve(name))


def test_truncated_and_corrupted_files_are_counted_as_failed_and_evaluation_goes_on(
    tmp_path: Path, model: OnnxModel
) -> None:
    paths = generate_dataset(tmp_path, preset="default", segments=5, seed=SEED + 1)
    truncated, corrupted = paths[1], paths[3]
    truncated.write_bytes(truncated.read_bytes()[:100])
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    corrupted.write_bytes(bytes(data))
    report = evaluate_directory(tmp_path, model)
    assert report.segments == 3
    assert report.failed == 2
    assert {f.path for f in report.failures} == {str(truncated), str(corrupted)}
    assert truncated.name in report.failures[0].error
    assert corrupted.name in report.failures[1].error
