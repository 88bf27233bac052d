"""Per-layer summary: torchinfo's table plus the receptive field of every layer.

torchinfo gives the output shapes and parameter counts; it has no receptive field, so that
column is computed here with the standard recurrence rf += (k - 1) * dilation * jump,
jump *= stride, over the leaf layers in the order they run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torchinfo
from torch import nn

from .models import count_parameters


@dataclass(frozen=True)
class LayerRow:
    index: int
    name: str  # e.g. "Conv2d"
    path: str  # e.g. "0.0"
    output: tuple[int, ...]  # without the batch dimension
    params: int
    rf: int
    jump: int


def _kernel_stride_dilation(m: nn.Module) -> tuple[int, int, int] | None:
    def first(v):
        return v[0] if isinstance(v, tuple) else v

    if isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
        dilation = first(getattr(m, "dilation", 1))
        stride = first(m.stride) if m.stride is not None else first(m.kernel_size)
        return first(m.kernel_size), stride, dilation
    return None


def receptive_field(layers: list[nn.Module], spatial: int = 28) -> list[tuple[int, int]]:
    """(rf, jump) after each layer. Adaptive pooling to 1x1 sees the whole input."""
    rf, jump, size, out = 1, 1, spatial, []
    for m in layers:
        ksd = _kernel_stride_dilation(m)
        if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
            ksd = (size, size, 1)
        if ksd:
            k, s, d = ksd
            pad = getattr(m, "padding", 0)
            pad = pad if isinstance(pad, int) else pad[0]
            rf += (k - 1) * d * jump
            jump *= s
            size = (size + 2 * pad - d * (k - 1) - 1) // s + 1
        out.append((rf, jump))
    return out


def layer_rows(model: nn.Module, input_size: tuple[int, ...] = (1, 1, 28, 28)) -> list[LayerRow]:
    stats = torchinfo.summary(model, input_size=input_size, verbose=0, device="cpu",
                              col_names=("output_size", "num_params"))
    leaves = [info for info in stats.summary_list if info.is_leaf_layer]
    rfs = receptive_field([info.module for info in leaves], input_size[-1])
    return [
        LayerRow(i + 1, info.class_name, info.var_name or "", tuple(info.output_size[1:]),
                 info.trainable_params, rf, jump)
        for i, (info, (rf, jump)) in enumerate(zip(leaves, rfs, strict=True))
    ]


def summary_table(model: nn.Module) -> str:
    rows = layer_rows(model)
    lines = [f"{'#':>3}  {'layer':<12} {'output':<14} {'params':>9} {'RF':>4} {'jump':>4}"]
    for r in rows:
        shape = "x".join(map(str, r.output))
        lines.append(f"{r.index:>3}  {r.name:<12} {shape:<14} {r.params:>9,} {r.rf:>4} {r.jump:>4}")
    lines.append(f"     total parameters: {count_parameters(model):,}")
    return "\n".join(lines)
