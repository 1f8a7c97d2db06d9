"""Training, calibration and export of CDNet (imports torch: the `train` command loads it lazily).

Reproducible from a seed: the windows come from `roadchange.world.generate_segment` with fixed
seeds, the data order and augmentation from `numpy.random.default_rng(seed)`, the weights from
`torch.manual_seed(seed)`, on `torch.set_num_threads(threads)` CPU threads.

Seed ranges (a dataset seed `S` gives segments `generate_segment(seed=S, index=0..n-1)`; presets
share the geometry of `(S, index)`, so preset `default` uses `S` and `hard` uses `S + 1`):

| use        | seeds                                                                   |
|------------|-------------------------------------------------------------------------|
| training   | `--seed` in 1000..89999 (default 1000): seeds 1000 and 1001              |
| validation | 900 and 901 (threshold calibration, model card)                          |
| evaluation | 424242 (default), 434343 (hard); no seed >= 100000 is ever used in training |

Training windows are drawn from BOTH presets (`default` and `hard`): every window of a change plus
`unchanged_per_segment` random unchanged windows per segment. After training, the segment-level
threshold on `segment_score` (top-k mean of window logits) is chosen on the validation seed to
maximise the mean macc over the presets, and folded into the changed head's bias, so the exported
model's decision threshold is 0 (`roadchange.pipeline.DEFAULT_RULE`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from roadchange.model import (
    INPUT_NAME,
    OPSET,
    CDNet,
    CDNetConfig,
    build_model,
    count_flops,
    export_onnx,
    parameter_count,
    variant_config,
)
from roadchange.pipeline import DEFAULT_RULE, segment_score
from roadchange.raster import (
    N_CHANNELS,
    WINDOW_PX,
    rasterize_windows,
    window_stations,
    window_targets,
)
from roadchange.world import CHANGE_TYPES, generate_segment

TRAIN_SEED_RANGE = range(1000, 90000)
VALIDATION_SEED = 900
EVALUATION_SEEDS = {"default": 424242, "hard": 434343}
PRESETS: tuple[str, ...] = ("default", "hard")
MAX_BATCH_SIZE = 64
PREFERRED_BATCH_SIZE = 8  # the server (and the in-process client) run larger batches as slices

Log = Callable[[str], None]
Array = np.ndarray[Any, Any]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything that determines a trained model (recorded in its model card)."""

    variant: str = "cdnet"
    seed: int = 1000
    presets: tuple[str, ...] = PRESETS
    segments_per_preset: int = 600
    unchanged_per_segment: int = 4
    validation_segments_per_preset: int = 100
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    remap_loss_weight: float = 0.5
    type_loss_weight: float = 0.5
    threads: int = 2
    augment: bool = True
    # weight of a window in the changed loss, by its change type (order of CHANGE_TYPES)
    type_weights: tuple[float, ...] = (1.0,) * 7
    widths: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.seed not in TRAIN_SEED_RANGE:
            raise ValueError(
                f"training seed {self.seed} is outside {TRAIN_SEED_RANGE.start}.."
                f"{TRAIN_SEED_RANGE.stop - 1}: validation uses {VALIDATION_SEED} and evaluation "
                f"{sorted(EVALUATION_SEEDS.values())}, pick a training seed in the range"
            )
        unknown = set(self.presets) - set(PRESETS)
        if unknown or not self.presets:
            raise ValueError(f"unknown presets {sorted(unknown)}: expected some of {PRESETS}")
        if min(self.segments_per_preset, self.validation_segments_per_preset, self.batch_size) < 1:
            raise ValueError("segments, validation segments and batch size must be at least 1")
        if len(self.type_weights) != len(CHANGE_TYPES) or min(self.type_weights) <= 0:
            raise ValueError(
                f"type_weights needs {len(CHANGE_TYPES)} positive weights (one per change type "
                f"{CHANGE_TYPES}), got {self.type_weights}"
            )
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")

    def model_config(self) -> CDNetConfig:
        base = variant_config(self.variant, in_channels=N_CHANNELS, input_px=WINDOW_PX)
        return (
            base
            if self.widths is None
            else CDNetConfig(**{**base.to_dict(), "widths": self.widths})
        )


@dataclass(frozen=True, slots=True)
class WindowSet:
    """Training windows (quantized to uint8: a quarter of the memory) and their targets."""

    rasters: Array  # (N, C, H, W) uint8: round(255 * value), values are in [0, 1]
    changed: Array  # (N,) float32
    remap: Array  # (N,) float32
    change_type: Array  # (N,) int64

    def __len__(self) -> int:
        return int(self.changed.shape[0])


@dataclass(frozen=True, slots=True)
class TrainResult:
    config: TrainConfig
    model_config: CDNetConfig
    threshold_logit: float
    validation: dict[str, dict[str, float]]
    train_windows: int
    seconds: dict[str, float]
    final_loss: float
    history: list[dict[str, float]] = field(default_factory=list)


def _pick_windows(changed: Array, keep_unchanged: int, rng: np.random.Generator) -> Array:
    positive = np.flatnonzero(changed > 0.5)
    negative = np.flatnonzero(changed <= 0.5)
    if negative.size > keep_unchanged:
        negative = np.sort(rng.choice(negative, size=keep_unchanged, replace=False))
    return np.concatenate([positive, negative])


def collect_windows(
    preset: str, seed: int, segments: int, *, keep_unchanged: int, rng: np.random.Generator
) -> WindowSet:
    """Windows of `segments` generated segments: all changed ones, `keep_unchanged` others each."""
    parts: list[tuple[Array, Array, Array, Array]] = []
    for index in range(segments):
        segment = generate_segment(seed=seed, index=index, preset=preset)
        stations = window_stations(segment.length_m)
        targets = window_targets(segment, stations)
        pick = _pick_windows(targets.changed, keep_unchanged, rng)
        rasters = np.round(rasterize_windows(segment, stations[pick]) * 255).astype(np.uint8)
        parts.append(
            (rasters, targets.changed[pick], targets.remap[pick], targets.change_type[pick])
        )
    return WindowSet(*(np.concatenate([p[i] for p in parts]) for i in range(4)))


def preset_seed(seed: int, preset: str) -> int:
    """Presets share `(seed, index)` geometry, so each preset gets its own seed: seed + its rank."""
    return seed + PRESETS.index(preset)


def training_windows(config: TrainConfig, log: Log) -> WindowSet:
    rng = np.random.default_rng(config.seed)
    sets = []
    for preset in config.presets:
        started = time.perf_counter()
        sets.append(
            collect_windows(
                preset,
                preset_seed(config.seed, preset),
                config.segments_per_preset,
                keep_unchanged=config.unchanged_per_segment,
                rng=rng,
            )
        )
        log(
            f"{preset}: {len(sets[-1])} windows from {config.segments_per_preset} segments "
            f"in {time.perf_counter() - started:.0f}s"
        )
    return WindowSet(*(np.concatenate([getattr(s, f) for s in sets]) for f in WindowSet.__slots__))


def _batch_tensors(data: WindowSet, idx: Array) -> tuple[torch.Tensor, ...]:
    return (
        torch.from_numpy(data.rasters[idx].astype(np.float32) / 255.0),
        torch.from_numpy(data.changed[idx].astype(np.float32)),
        torch.from_numpy(data.remap[idx].astype(np.float32)),
        torch.from_numpy(data.change_type[idx].astype(np.int64)),
    )


def _augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Mirror windows along and across the road (a change stays the same change): 4x the data."""
    flip_rows = torch.from_numpy(rng.random(x.shape[0]) < 0.5)
    flip_cols = torch.from_numpy(rng.random(x.shape[0]) < 0.5)
    x = torch.where(flip_rows[:, None, None, None], x.flip(2), x)
    return torch.where(flip_cols[:, None, None, None], x.flip(3), x)


def _loss(model: CDNet, batch: tuple[torch.Tensor, ...], config: TrainConfig) -> torch.Tensor:
    x, changed, remap, change_type = batch
    changed_logit, remap_logit, type_logits = model(x)
    bce = nn.functional.binary_cross_entropy_with_logits
    weight = torch.tensor(config.type_weights, dtype=torch.float32)[change_type]
    return (
        bce(changed_logit, changed, weight=weight / weight.mean())
        + config.remap_loss_weight * bce(remap_logit, remap)
        + config.type_loss_weight * nn.functional.cross_entropy(type_logits, change_type)
    )


def _batches(n: int, batch_size: int, steps: int, rng: np.random.Generator) -> Array:
    """`steps` batches of indices: epochs of fresh permutations, concatenated."""
    epochs = math.ceil(steps * batch_size / n) if steps else 0
    order = np.concatenate([rng.permutation(n) for _ in range(epochs)] or [np.zeros(0, np.int64)])
    return order[: steps * batch_size].reshape(steps, batch_size) if steps else order.reshape(0, 1)


def fit(model: CDNet, data: WindowSet, config: TrainConfig, log: Log) -> list[dict[str, float]]:
    """Train in place for `config.steps` steps (AdamW, one-cycle schedule); return the loss log."""
    if config.steps == 0:
        return []
    rng = np.random.default_rng(config.seed + 1)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.steps, pct_start=0.15
    )
    history: list[dict[str, float]] = []
    running, started = 0.0, time.perf_counter()
    model.train()
    for step, idx in enumerate(_batches(len(data), config.batch_size, config.steps, rng), 1):
        x, *targets = _batch_tensors(data, np.sort(idx))
        batch = (_augment(x, rng), *targets) if config.augment else (x, *targets)
        loss = _loss(model, batch, config)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        schedule.step()
        running += float(loss.detach())
        if step % 50 == 0 or step == config.steps:
            count = 50 if step % 50 == 0 else step % 50
            history.append(
                {"step": step, "loss": running / count, "seconds": time.perf_counter() - started}
            )
            log(
                f"step {step}/{config.steps} loss {running / count:.4f} "
                f"{time.perf_counter() - started:.0f}s"
            )
            running = 0.0
    model.eval()
    return history


def window_logits(model: CDNet, rasters: Array, batch: int = 64) -> Array:
    """Changed logits of windows (eval mode, no grad)."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, rasters.shape[0], batch):
            x = torch.from_numpy(np.ascontiguousarray(rasters[start : start + batch], np.float32))
            out.append(model(x)[0].numpy())
    return np.concatenate(out)


def validation_scores(model: CDNet, preset: str, segments: int) -> tuple[Array, Array]:
    """Segment scores and changed labels of the validation segments of `preset`."""
    scores, labels = [], []
    for index in range(segments):
        segment = generate_segment(
            seed=preset_seed(VALIDATION_SEED, preset), index=index, preset=preset
        )
        rasters = rasterize_windows(segment, window_stations(segment.length_m))
        scores.append(segment_score(window_logits(model, rasters), DEFAULT_RULE.top_k))
        labels.append(segment.label.changed)
    return np.array(scores), np.array(labels, dtype=bool)


def binary_metrics(scores: Array, labels: Array, threshold: float) -> dict[str, float]:
    predicted = scores > threshold
    tp = int((predicted & labels).sum())
    fp, fn = int((predicted & ~labels).sum()), int((~predicted & labels).sum())
    tn = int((~predicted & ~labels).sum())
    recall, specificity = tp / max(tp + fn, 1), tn / max(tn + fp, 1)
    return {
        "macc": (recall + specificity) / 2,
        "f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "recall": recall,
        "specificity": specificity,
        "segments": float(labels.size),
    }


def choose_threshold(per_preset: Sequence[tuple[Array, Array]]) -> float:
    """The threshold maximising the mean macc over presets (midpoints between sorted scores;
    ties go to the candidate closest to 0)."""
    allscores = np.sort(np.concatenate([s for s, _ in per_preset]))
    candidates = np.concatenate(
        [[allscores[0] - 1.0], (allscores[1:] + allscores[:-1]) / 2, [allscores[-1] + 1.0]]
    )
    best = max(
        candidates,
        key=lambda t: (
            np.mean([binary_metrics(s, y, float(t))["macc"] for s, y in per_preset]),
            -abs(float(t)),
        ),
    )
    return float(best)


def calibrate(
    model: CDNet, config: TrainConfig, log: Log
) -> tuple[float, dict[str, dict[str, float]]]:
    """Choose the segment threshold on the validation seed and fold it into the changed bias."""
    per_preset = {
        p: validation_scores(model, p, config.validation_segments_per_preset) for p in PRESETS
    }
    threshold = choose_threshold(list(per_preset.values()))
    with torch.no_grad():
        model.changed_head.bias.sub_(threshold)
    metrics = {p: binary_metrics(s, y, threshold) for p, (s, y) in per_preset.items()}
    log(
        f"threshold {threshold:.3f}: "
        + ", ".join(f"{p} macc {m['macc']:.3f}" for p, m in metrics.items())
    )
    return threshold, metrics


def train(config: TrainConfig, *, log: Log = print) -> tuple[CDNet, TrainResult]:
    """Build the data, train, calibrate; the returned model is in eval mode, ready to export."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    data = training_windows(config, log)
    t1 = time.perf_counter()
    model = build_model(config.model_config(), seed=config.seed)
    history = fit(model, data, config, log)
    t2 = time.perf_counter()
    threshold, validation = calibrate(model, config, log)
    seconds = {"data": t1 - t0, "fit": t2 - t1, "calibrate": time.perf_counter() - t2}
    result = TrainResult(
        config=config,
        model_config=model.config,
        threshold_logit=threshold,
        validation=validation,
        train_windows=len(data),
        seconds=seconds,
        final_loss=history[-1]["loss"] if history else float("nan"),
        history=history,
    )
    return model, result


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def render_config(name: str, config: CDNetConfig, sha256: str) -> str:
    """`config.toml` in the model-repository format the fleetinfer loader reads."""
    shape = f"[-1, {config.in_channels}, {config.input_px}, {config.input_px}]"
    outputs = [
        ("changed_logit", "[-1]"),
        ("remap_logit", "[-1]"),
        ("type_logits", f"[-1, {config.n_types}]"),
    ]
    lines = [
        f'name = "{name}"',
        f"max_batch_size = {MAX_BATCH_SIZE}",
        "",
        "[[inputs]]",
        f'name = "{INPUT_NAME}"',
        'dtype = "float32"',
        f"shape = {shape}",
        "",
    ]
    for out_name, out_shape in outputs:
        lines += [
            "[[outputs]]",
            f'name = "{out_name}"',
            'dtype = "float32"',
            f"shape = {out_shape}",
            "",
        ]
    lines += [
        "[batching]",
        "max_queue_delay_us = 0",
        f"preferred_batch_sizes = [{PREFERRED_BATCH_SIZE}]  # caps the batch run at once, and the "
        "activation memory it needs",
        "",
        "[instances]",
        "count = 1",
        "",
        "[runtime]",
        'execution_providers = ["CPUExecutionProvider"]',
        "intra_op_threads = 0",
        "inter_op_threads = 1",
        'graph_optimization_level = "all"',
        "memory_arena = true",
        "",
        "[version_policy]",
        'policy = "latest"',
        "",
        "[versions.1]",
        f'sha256 = "{sha256}"',
        "",
    ]
    return "\n".join(lines)


def _signature_table(config: CDNetConfig) -> str:
    px = config.input_px
    rows = [
        (
            "input",
            INPUT_NAME,
            f"float32 [batch, {config.in_channels}, {px}, {px}]",
            "road-aligned window, channels `roadchange.raster.CHANNELS`",
        ),
        (
            "output",
            "changed_logit",
            "float32 [batch]",
            "window overlaps a change (logit, 0 = threshold)",
        ),
        ("output", "remap_logit", "float32 [batch]", "the change is structural (logit)"),
        (
            "output",
            "type_logits",
            f"float32 [batch, {config.n_types}]",
            f"change type, order {list(CHANGE_TYPES)}",
        ),
    ]
    return "\n".join(
        ["| kind | name | type | meaning |", "|---|---|---|---|"]
        + [f"| {a} | `{b}` | {c} | {d} |" for a, b, c, d in rows]
    )


def render_model_card(name: str, model: CDNet, result: TrainResult, sha256: str) -> str:
    """MODEL_CARD.md: training config, seed, metrics, sha256, signature."""
    config = result.config
    presets = " ".join(f"--preset {p}" for p in config.presets)
    weights = ",".join(f"{w:g}" for w in config.type_weights)
    command = (
        f"roadchange train --variant {config.variant} {presets} --seed {config.seed} "
        f"--type-weights {weights} --batch-size {config.batch_size} "
        f"--segments {config.segments_per_preset} --steps {config.steps} "
        f"--val-segments {config.validation_segments_per_preset} --out DIR"
    )
    validation = "\n".join(
        f"| {p} | {m['segments']:.0f} | {m['macc']:.4f} | {m['f1']:.4f} | {m['recall']:.4f} | "
        f"{m['specificity']:.4f} |"
        for p, m in result.validation.items()
    )
    return f"""# {name}

CDNet variant `{config.variant}`: an early-fusion CNN that compares the current HD map with recent
drives in one road-aligned window (see `roadchange/model.py`). Trained on synthetic segments of the
presets {list(config.presets)}; not a model of real sensor data.

- sha256 of `1/model.onnx`: `{sha256}`
- parameters: {parameter_count(model):,}; FLOPs per window: {count_flops(model):,}
- ONNX opset {OPSET}, dynamic batch, max batch size {MAX_BATCH_SIZE}
- reproduce: `{command}` (torch {torch.__version__}, {config.threads} CPU threads)

## Signature

{_signature_table(model.config)}

## Training

Seed {config.seed}, i.e. dataset seeds {config.seed} (default) / {config.seed + 1} (hard) (training seeds {TRAIN_SEED_RANGE.start}..{TRAIN_SEED_RANGE.stop - 1};
validation seeds {VALIDATION_SEED} (default) / {VALIDATION_SEED + 1} (hard); evaluation seeds {EVALUATION_SEEDS} are never used in training).
{result.train_windows} training windows, final training loss {result.final_loss:.4f}.
Time: data {result.seconds["data"]:.0f} s, fit {result.seconds["fit"]:.0f} s, calibration
{result.seconds["calibrate"]:.0f} s.

```json
{json.dumps({"train": asdict(config), "model": model.config.to_dict()}, indent=2)}
```

## Calibration and validation (seeds {VALIDATION_SEED} / {VALIDATION_SEED + 1}, CNN alone)

Segment score: mean of the top {DEFAULT_RULE.top_k} window `changed_logit`s. The threshold
{result.threshold_logit:.4f} chosen on the validation segments (best mean macc over presets) was
subtracted from the changed head's bias, so the shipped decision threshold is 0.

| preset | segments | macc | f1 | recall | specificity |
|---|---|---|---|---|---|
{validation}
"""


def write_model_repository(root: Path, name: str, model: CDNet, result: TrainResult) -> Path:
    """Write `root/name/{config.toml, 1/model.onnx, MODEL_CARD.md}`; return the model folder."""
    folder = root / name
    onnx_path = export_onnx(model, folder / "1" / "model.onnx")
    sha256 = file_sha256(onnx_path)
    (folder / "config.toml").write_text(render_config(name, model.config, sha256))
    (folder / "MODEL_CARD.md").write_text(render_model_card(name, model, result, sha256))
    return folder
