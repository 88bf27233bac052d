"""Building blocks of the ladder's networks, and the one parameter counter.

A block is written the way the seed's notebooks describe it: `Conv(8, 16, order="cbrd",
dropout=0.03)` is conv -> BatchNorm -> ReLU -> Dropout. Letters: c conv, b BatchNorm,
r ReLU, d dropout. Every network returns logits; `F.cross_entropy` on logits is the seed's
`nll_loss(log_softmax(x))`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Dropout(nn.Dropout):
    """`nn.Dropout` with the same distribution, drawn faster on the CPU.

    torch's CPU `bernoulli_` draws one Mersenne-Twister number per element, and at the seed's
    p = 0.03 that was a third of a Step 6 training step. Here only the dropped positions are
    drawn: a Poisson(-n log(1 - p)) number of uniform hits leaves each element un-hit with
    probability exactly 1 - p, independently (Poisson splitting), so the mask is i.i.d.
    Bernoulli(p) as in `nn.Dropout`, from about 30x fewer random numbers. The hits are
    positions in channels-last order, so a seed drops the same elements in any memory layout.
    CUDA keeps the native kernel, which is fast there.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return F.dropout(x, self.p, self.training)
        n = x.numel()
        hits = int(torch.poisson(torch.tensor(-n * math.log1p(-self.p), dtype=torch.float64)))
        mask = torch.empty_like(x, memory_format=_layout_of(x))
        offsets = _storage_offsets(torch.randint(0, n, (hits,)), mask)
        mask.as_strided((n,), (1,)).fill_(1 / (1 - self.p)).index_fill_(0, offsets, 0)
        return x * mask


def _layout_of(x: torch.Tensor) -> torch.memory_format:
    return (torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format)


def _storage_offsets(hits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Where the elements at positions `hits` of `t` (laid out as `_layout_of` says) sit in
    its memory. Positions count in channels-last order for 4-d tensors, so that the same
    elements drop in any layout, at no cost in the layout the ladder trains in by default.
    Computed in float64, which holds these integers exactly and divides faster than int64."""
    if t.dim() != 4 or t.is_contiguous(memory_format=torch.channels_last):
        return hits
    # position k = (n*HW + hw)*C + c sits at n*CHW + c*HW + hw: with q = k // C = n*HW + hw,
    # that is k*HW + q*(1 - C*HW) + n*(C*HW - HW)
    c, hw = t.shape[1], t.shape[2] * t.shape[3]
    k = hits.double()
    q = (k / c).floor_()
    n = (q / hw).floor_()
    return k.mul_(hw).add_(q, alpha=1 - c * hw).add_(n, alpha=c * hw - hw).long()


class MaxPoolCL(nn.MaxPool2d):
    """`nn.MaxPool2d` run on a channels-last copy of an NCHW input, the result returned NCHW:
    torch's NCHW max-pool on the CPU was several times slower than its channels-last one plus
    the two copies (`benchmarks/speed.py --ablate`). Gradients are torch's own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


class BatchNormNCHW(nn.BatchNorm2d):
    """`nn.BatchNorm2d` run on an NCHW copy of a channels-last input, the result returned
    channels-last: on some CPUs torch's channels-last BatchNorm backward is many times slower
    than its NCHW one, more than the two copies cost. Same parameters and state_dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous():
            return super().forward(x)
        return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)


class Conv(nn.Sequential):
    """A convolution followed by BatchNorm / ReLU / Dropout in the order given by `order`."""

    def __init__(self, cin: int, cout: int, k: int = 3, *, order: str = "c", padding: int = 0,
                 dropout: float = 0.0, bias: bool = False, groups: int = 1) -> None:
        if order.count("c") != 1 or set(order) - set("cbrd"):
            raise ValueError(f"order {order!r}: one 'c' and any of 'b', 'r', 'd'")
        make = {
            "c": lambda: nn.Conv2d(cin, cout, k, padding=padding, bias=bias, groups=groups),
            "b": lambda: nn.BatchNorm2d(cout),
            "r": lambda: nn.ReLU(),
            "d": lambda: Dropout(dropout),
        }
        super().__init__(*(make[letter]() for letter in order))


def separable(cin: int, cout: int, *, padding: int = 1) -> nn.Sequential:
    """Depthwise 3x3 (one filter per channel) then pointwise 1x1, BatchNorm + ReLU after the
    pair: 9*cin + cin*cout weights instead of 9*cin*cout for a full 3x3."""
    return nn.Sequential(Conv(cin, cin, 3, padding=padding, groups=cin),
                         Conv(cin, cout, 1, order="cbr"))


class Net(nn.Sequential):
    """A stack of layers ending in [N, 10, 1, 1] or [N, 10]; returns logits [N, 10]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).flatten(1)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, BatchNorm affine included, buffers (running stats) not."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
