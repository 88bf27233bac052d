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
