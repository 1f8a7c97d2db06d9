"""CDNet: an early-fusion change-detection CNN (PyTorch, training only).

The input is one road-aligned window: the current map's rasters and the drives' rasters stacked as
channels, `(batch, channels, input_px, input_px)`. Map and drive evidence are fused in the first
layer ("early fusion"), so every later layer can compare the two. The network is a patchify stem
(stride `stem_stride`) followed by stages of 3x3 conv + batch norm + ReLU, each stage after the
first halving the resolution. Global average and max pooling (max: a change is a *local* event,
anywhere in the window) feed three heads:

- `changed_logit` (batch,)   the window overlaps a change;
- `remap_logit`   (batch,)   the change is structural (the lane graph must be re-mapped);
- `type_logits`   (batch, 7) which change (index into `roadchange.world.CHANGE_TYPES`).

Width, depth, stem stride, input size and the neck (the MLP between pooling and the heads) are
parameters. `cdnet` is the shipped model; `cdnet-l` keeps the weights but runs its stem at full
resolution (stride 1), which multiplies the FLOPs by about 16; `cdnet-h` is `cdnet-l` with a neck of
two 8,192-wide layers, 71 M parameters (285 MB in fp32) that cost little compute: a model whose
weights, as the production model's, weigh more than a worker process. Both exist for benchmarks only.

This module imports torch; the runtime (pipeline, evaluation) never does.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

N_CHANGE_TYPES = 7
INPUT_NAME = "raster"
OUTPUT_NAMES: tuple[str, ...] = ("changed_logit", "remap_logit", "type_logits")
VARIANTS: tuple[str, ...] = ("cdnet", "cdnet-l", "cdnet-h")
OPSET = 17


@dataclass(frozen=True, slots=True)
class CDNetConfig:
    """Shape of a CDNet. All fields are keyword-only and JSON-safe (see `to_dict`)."""

    in_channels: int = 9
    input_px: int = 128
    widths: tuple[int, ...] = (32, 64, 128, 256)
    layers_per_stage: int = 2
    stem_stride: int = 4
    n_types: int = N_CHANGE_TYPES
    neck_width: int = 0  # 0: half the pooled features
    neck_layers: int = 1

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.n_types < 2 or not self.widths or self.neck_layers < 1:
            raise ValueError(f"invalid CDNet shape: {self}")
        if self.input_px % (self.stem_stride * 2 ** (len(self.widths) - 1)) != 0:
            raise ValueError(
                f"input_px={self.input_px} must be divisible by stem_stride * 2**(stages-1) = "
                f"{self.stem_stride * 2 ** (len(self.widths) - 1)}: change input_px or the stages"
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["widths"] = list(self.widths)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CDNetConfig:
        return cls(**{**data, "widths": tuple(data["widths"])})


def variant_config(name: str, *, in_channels: int = 9, input_px: int = 128) -> CDNetConfig:
    """The named variant: `cdnet` (shipped), `cdnet-l` (16x the FLOPs) or `cdnet-h` (`cdnet-l`
    with 285 MB of weights); the last two for benchmarks."""
    base = CDNetConfig(in_channels=in_channels, input_px=input_px)
    if name == "cdnet":
        return base
    if name == "cdnet-l":
        return replace(base, stem_stride=1)
    if name == "cdnet-h":
        return replace(base, stem_stride=1, neck_width=8192, neck_layers=2)
    raise ValueError(f"unknown CDNet variant {name!r}: expected one of {VARIANTS}")


def _conv_bn_relu(c_in: int, c_out: int, *, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(
            c_in, c_out, kernel, stride=stride, padding=kernel // 2 if kernel > 1 else 0, bias=False
        ),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _stage(c_in: int, c_out: int, *, layers: int, downsample: bool) -> nn.Sequential:
    blocks = [_conv_bn_relu(c_in, c_out, kernel=3, stride=2 if downsample else 1)]
    blocks += [_conv_bn_relu(c_out, c_out, kernel=3, stride=1) for _ in range(layers - 1)]
    return nn.Sequential(*blocks)


def _stem(config: CDNetConfig) -> nn.Sequential:
    stride = config.stem_stride
    conv = nn.Conv2d(
        config.in_channels,
        config.widths[0],
        max(stride, 3) if stride == 1 else stride,
        stride=stride,
        padding=1 if stride == 1 else 0,
        bias=False,
    )
    return nn.Sequential(conv, nn.BatchNorm2d(config.widths[0]), nn.ReLU(inplace=True))


class CDNet(nn.Module):
    """The network; `forward` returns `(changed_logit, remap_logit, type_logits)`."""

    def __init__(self, config: CDNetConfig) -> None:
        super().__init__()
        self.config = config
        self.stem = _stem(config)
        widths = (config.widths[0], *config.widths)
        self.stages = nn.Sequential(
            *(
                _stage(widths[i], widths[i + 1], layers=config.layers_per_stage, downsample=i > 0)
                for i in range(len(config.widths))
            )
        )
        features = 2 * config.widths[-1]
        width = config.neck_width or features // 2
        sizes = (features, *(width,) * config.neck_layers)
        self.neck = nn.Sequential(
            *(
                layer
                for i in range(config.neck_layers)
                for layer in (nn.Linear(sizes[i], sizes[i + 1]), nn.ReLU(inplace=True))
            )
        )
        self.changed_head = nn.Linear(width, 1)
        self.remap_head = nn.Linear(width, 1)
        self.type_head = nn.Linear(width, config.n_types)

    def forward(self, raster: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stages(self.stem(raster))
        pooled = torch.cat((x.mean(dim=(2, 3)), x.amax(dim=(2, 3))), dim=1)
        h = self.neck(pooled)
        return self.changed_head(h)[:, 0], self.remap_head(h)[:, 0], self.type_head(h)


def build_model(config: CDNetConfig, *, seed: int) -> CDNet:
    """A freshly initialized CDNet; the same seed gives the same weights."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return CDNet(config)
    finally:
        torch.random.set_rng_state(generator_state)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def _leaf_modules(model: nn.Module) -> Iterator[nn.Module]:
    return (m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))


def count_flops(model: CDNet) -> int:
    """FLOPs of one sample's forward pass (2 per multiply-accumulate of conv and linear layers)."""
    macs: list[int] = []
    hooks = [
        m.register_forward_hook(lambda mod, _inp, out: macs.append(_layer_macs(mod, out)))
        for m in _leaf_modules(model)
    ]
    config = model.config
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, config.in_channels, config.input_px, config.input_px))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return 2 * sum(macs)


def export_onnx(model: CDNet, path: Path) -> Path:
    """Export to ONNX (opset 17, dynamic batch) with the names `roadchange.pipeline` expects."""
    config = model.config
    example = torch.zeros(2, config.in_channels, config.input_px, config.input_px)
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    # torch 2.13 warns that the TorchScript exporter is legacy; it is exact for this plain CNN,
    # fast, and writes one self-contained file. The warning is not ours to fix here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return path
