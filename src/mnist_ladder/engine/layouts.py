"""Memory layouts a step's model can train in: the convolutions' weights channels-last or
NCHW, BatchNorm or the max-pool on a copy in the other layout. Every layout computes the same
function with the same dropout masks, so results agree up to floating-point noise; which is
fastest is measured by `probe.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import ConfigError
from .models import BatchNormNCHW, MaxPool2d, MaxPoolCL


@dataclass(frozen=True)
class Layout:
    channels_last: bool  # the convolutions' weights, hence their outputs
    batchnorm_nchw: bool = False  # BatchNorm on an NCHW copy (`BatchNormNCHW`)
    pool_channels_last: bool = False  # max-pool on a channels-last copy (`MaxPoolCL`)


LAYOUTS = {
    "cl": Layout(channels_last=True),
    "cl+bn-nchw": Layout(channels_last=True, batchnorm_nchw=True),
    "nchw": Layout(channels_last=False),
    "nchw+pool-cl": Layout(channels_last=False, pool_channels_last=True),
}
CHOICES = ("auto", *LAYOUTS)
DEFAULT = "cl"  # what the ladder used before layouts were measured; the choice on CUDA


def check(name: str) -> str:
    if name not in CHOICES:
        raise ConfigError(f"unknown layout {name!r}; use {', '.join(CHOICES)}")
    return name


def apply(model: nn.Module, name: str) -> nn.Module:
    """`model` in layout `name`, in place. Modules are swapped for subclasses that hold the
    same parameters and buffers, so state_dicts load either way."""
    layout = LAYOUTS[check(name) if name != "auto" else DEFAULT]
    for module in model.modules():
        if layout.batchnorm_nchw and type(module) is nn.BatchNorm2d:
            module.__class__ = BatchNormNCHW
        if type(module) is nn.MaxPool2d:
            module.__class__ = MaxPoolCL if layout.pool_channels_last else MaxPool2d
    fmt = torch.channels_last if layout.channels_last else torch.contiguous_format
    return model.to(memory_format=fmt)
