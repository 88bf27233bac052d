"""Per-layer summary: torchinfo's table plus the receptive field of every layer.

torchinfo gives the output shapes and parameter counts; it has no receptive field, so that
column is computed here with the standard recurrence rf += (k - 1) * dilation * jump,
jump *= stride, over the leaf layers in the order they run. The same computation (`fields`)
also places each field on the input, for the receptive-field figure (insight.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torchinfo
from torch import nn

from ..engine.models import count_parameters


@dataclass(frozen=True)
class Field:
    """What one unit of a layer's output sees of the input."""

    rf: int  # the side of the square of input pixels it sees
    jump: int  # input pixels between neighbouring units of this layer
    start: float  # the centre of the first unit's field (input pixel i spans [i, i + 1))
    size: int  # the side of this layer's output map
    kernel: int  # the layer's window (1 for layers without one: a unit sees what its input saw)

    def centre_unit(self, spatial: int = 28) -> float:
        """The centre, in input coordinates, of the unit nearest the input's centre."""
        unit = min(max(round((spatial / 2 - self.start) / self.jump), 0), self.size - 1)
        return self.start + unit * self.jump


@dataclass(frozen=True)
class LayerRow:
    index: int
    name: str  # e.g. "Conv2d"
    path: str  # e.g. "0.0"
    output: tuple[int, ...]  # without the batch dimension
    params: int
    field: Field

    @property
    def rf(self) -> int:
        return self.field.rf

    @property
    def jump(self) -> int:
        return self.field.jump


def _first(v):
    return v[0] if isinstance(v, tuple) else v


def _window(m: nn.Module, size: int) -> tuple[int, int, int, int] | None:
    """(kernel, stride, dilation, padding) of a layer with a spatial window, else None.
    Adaptive pooling (to 1x1 in this project) is one window over the whole map."""
    if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        return size, size, 1, 0
    if not isinstance(m, nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d):
        return None
    k, d = _first(m.kernel_size), _first(getattr(m, "dilation", 1))
    stride = _first(m.stride) if m.stride is not None else k
    pad = getattr(m, "padding", 0)
    if isinstance(pad, str):  # Conv2d's "same" / "valid"
        pad = d * (k - 1) // 2 if pad == "same" else 0
    return k, stride, d, _first(pad)


def fields(layers: list[nn.Module], spatial: int = 28) -> list[Field]:
    """The receptive field after each layer, and where it sits on the input: the one
    computation behind the table's RF column and the receptive-field figure."""
    rf, jump, start, size, out = 1, 1, 0.5, spatial, []
    for m in layers:
        window = _window(m, size)
        k = 1
        if window:
            k, s, d, pad = window
            start += ((k - 1) * d / 2 - pad) * jump  # the first window's centre moves with padding
            rf += (k - 1) * d * jump
            jump *= s
            size = (size + 2 * pad - d * (k - 1) - 1) // s + 1
        out.append(Field(rf, jump, start, size, k))
    return out


def receptive_field(layers: list[nn.Module], spatial: int = 28) -> list[tuple[int, int]]:
    """(rf, jump) after each layer. Adaptive pooling to 1x1 sees the whole input."""
    return [(f.rf, f.jump) for f in fields(layers, spatial)]


def layer_rows(model: nn.Module, input_size: tuple[int, ...] = (1, 1, 28, 28)) -> list[LayerRow]:
    stats = torchinfo.summary(
        model, input_size=input_size, verbose=0, device="cpu", col_names=("output_size", "num_params")
    )
    leaves = [info for info in stats.summary_list if info.is_leaf_layer]
    found = fields([info.module for info in leaves], input_size[-1])
    return [
        LayerRow(
            i + 1, info.class_name, info.var_name or "", tuple(info.output_size[1:]), info.trainable_params, f
        )
        for i, (info, f) in enumerate(zip(leaves, found, strict=True))
    ]


def summary_table(model: nn.Module) -> str:
    rows = layer_rows(model)
    lines = [f"{'#':>3}  {'layer':<12} {'output':<14} {'params':>9} {'RF':>4} {'jump':>4}"]
    for r in rows:
        shape = "x".join(map(str, r.output))
        lines.append(f"{r.index:>3}  {r.name:<12} {shape:<14} {r.params:>9,} {r.rf:>4} {r.jump:>4}")
    lines.append(f"     total parameters: {count_parameters(model):,}")
    return "\n".join(lines)
