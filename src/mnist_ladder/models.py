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
    Bernoulli(p) as in `nn.Dropout`, from about 30x fewer random numbers. CUDA keeps the
    native kernel, which is fast there.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return F.dropout(x, self.p, self.training)
        n = x.numel()
        hits = int(torch.poisson(torch.tensor(-n * math.log1p(-self.p), dtype=torch.float64)))
        mask = torch.empty_like(x)  # keeps channels_last; which element is which does not matter
        flat = mask.as_strided((n,), (1,))
        flat.fill_(1 / (1 - self.p)).index_fill_(0, torch.randint(0, n, (hits,)), 0)
        return x * mask


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


# ---------------------------------------------------------------- networks shared by steps
# Step 7's family: Steps 7-13 and their variants build on these.


def cbr(cin: int, cout: int, k: int = 3, padding: int = 0) -> Conv:
    """conv -> BatchNorm -> ReLU, the frontier steps' block."""
    return Conv(cin, cout, k, order="cbr", padding=padding)


def separable_net(widths: tuple[int, ...] = (8, 16, 8, 12, 20, 24)) -> nn.Module:
    """Step 7's network; `widths` = the two convolutions, the transition, the full 3x3 and
    the two separable blocks (Step 8 and the variants reuse it wider)."""
    c1, c2, t, c3, s1, s2 = widths
    return Net(
        cbr(1, c1),  # 26, RF 3
        cbr(c1, c2),  # 24, RF 5
        nn.MaxPool2d(2),  # 12, RF 6
        Conv(c2, t, 1),  # 12: plain 1x1 transition, as in Step 6
        cbr(t, c3),  # 10, RF 10
        separable(c3, s1, padding=0),  # 8, RF 14
        separable(s1, s2, padding=0),  # 6, RF 18
        nn.AdaptiveAvgPool2d(1),
        Conv(s2, 10, 1),
    )


def spatial_head_net(widths: tuple[int, ...] = (8, 16, 8, 12, 20, 24)) -> nn.Module:
    """Step 7 with a learned spatial weighting instead of GAP: a 1x1 convolution to the ten
    classes on the last 6x6 map, then one 6x6 depthwise filter per class. MNIST digits are
    centred, so where a feature fires carries information that averaging throws away."""
    net = separable_net(widths)
    gap, head = net[-2], net[-1]
    assert isinstance(gap, nn.AdaptiveAvgPool2d)
    return Net(*net[:-2], head, nn.Conv2d(10, 10, 6, groups=10, bias=False))


def all_full_net(widths: tuple[int, ...] = (8, 10, 8, 10, 10, 12)) -> nn.Module:
    """Step 6's shape with full 3x3 convolutions only (narrowed to fit 4,000 by default)."""
    c1, c2, t, c3, c4, c5 = widths
    return Net(
        cbr(1, c1), cbr(c1, c2), nn.MaxPool2d(2), Conv(c2, t, 1),
        cbr(t, c3), cbr(c3, c4), cbr(c4, c5), nn.AdaptiveAvgPool2d(1), Conv(c5, 10, 1))


def pool_later_net(widths: tuple[int, ...] = (8, 8, 12, 8, 12, 20, 24),
                     front_padding: int = 0) -> nn.Module:
    """Three 3x3 convolutions before the pool instead of two (RF 7 there, not 5): more work
    at full resolution for few weights, paid for with narrower layers after it.
    `front_padding=1` keeps those three at 28x28 (14x14 after the pool, 8x8 at GAP): more
    computation again, the same weights. Map sizes in the comments are for no padding."""
    c1, c2, c3, t, c4, s1, s2 = widths
    p = front_padding
    return Net(
        cbr(1, c1, padding=p), cbr(c1, c2, padding=p), cbr(c2, c3, padding=p),  # 22, RF 7
        nn.MaxPool2d(2),  # 11, RF 8
        Conv(c3, t, 1),
        cbr(t, c4),  # 9, RF 12
        separable(c4, s1, padding=0),  # 7, RF 16
        separable(s1, s2, padding=0),  # 5, RF 20
        nn.AdaptiveAvgPool2d(1),
        Conv(s2, 10, 1),
    )
