"""Building blocks of the ladder's networks, and the one parameter counter.

A block is written the way the seed's notebooks describe it: `Conv(8, 16, order="cbrd",
dropout=0.03)` is conv -> BatchNorm -> ReLU -> Dropout. Letters: c conv, b BatchNorm,
r ReLU, d dropout. Every network returns logits; `F.cross_entropy` on logits is the seed's
`nll_loss(log_softmax(x))`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import fused


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
        mask = torch.empty_like(x, memory_format=_layout_of(x))
        offsets = _storage_offsets(fused.dropout_positions(x, self.p), mask)
        mask.as_strided((n,), (1,)).fill_(1 / (1 - self.p)).index_fill_(0, offsets, 0)
        return x * mask


def _layout_of(x: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )


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


class MaxPool2d(nn.MaxPool2d):
    """`nn.MaxPool2d`, with a 2x2 one on a channels-last CPU map run by `fused.max_pool`
    (fused.py says why). `layout.apply` swaps it in; it prints and loads as the original."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused.can_pool(x, self):
            return fused.max_pool(x)
        return super().forward(x)


class MaxPoolCL(MaxPool2d):
    """A max-pool run on a channels-last copy of an NCHW input, the result returned NCHW:
    torch's NCHW max-pool on the CPU was several times slower than its channels-last one plus
    the two copies (`benchmarks/speed.py --ablate`)."""

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

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int = 3,
        *,
        order: str = "c",
        padding: int = 0,
        dropout: float = 0.0,
        bias: bool = False,
        groups: int = 1,
    ) -> None:
        if order.count("c") != 1 or set(order) - set("cbrd"):
            raise ValueError(f"order {order!r}: one 'c' and any of 'b', 'r', 'd'")
        make = {
            "c": lambda: nn.Conv2d(cin, cout, k, padding=padding, bias=bias, groups=groups),
            "b": lambda: nn.BatchNorm2d(cout),
            "r": lambda: nn.ReLU(),
            "d": lambda: Dropout(dropout),
        }
        super().__init__(*(make[letter]() for letter in order))
        self.order = order
        self.fused = fused.fusable(order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused or self._hooked():
            return super().forward(x)
        z = self[0](x)
        bn = self[self.order.index("b")]
        if not fused.can_fuse(z, bn):
            for layer in list(self)[1:]:
                z = layer(z)
            return z
        after = self.order[self.order.index("b") + 1 :]
        p = self[self.order.index("d")].p if "d" in after else 0.0
        # One autograd function for BatchNorm and its ReLU and dropout: fused.py says why.
        return fused.norm_block(z, bn, pre_relu=self.order[1] == "r", post_relu="r" in after, p=p)

    def _hooked(self) -> bool:
        """Hooks on a layer (torchinfo's, insight's) must see it run on its own."""
        return any(m._forward_hooks or m._forward_pre_hooks for m in self)


def separable(cin: int, cout: int, *, padding: int = 1) -> nn.Sequential:
    """Depthwise 3x3 (one filter per channel) then pointwise 1x1, BatchNorm + ReLU after the
    pair: 9*cin + cin*cout weights instead of 9*cin*cout for a full 3x3."""
    return nn.Sequential(Conv(cin, cin, 3, padding=padding, groups=cin), Conv(cin, cout, 1, order="cbr"))


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
        cbr(1, c1),
        cbr(c1, c2),
        nn.MaxPool2d(2),
        Conv(c2, t, 1),
        cbr(t, c3),
        cbr(c3, c4),
        cbr(c4, c5),
        nn.AdaptiveAvgPool2d(1),
        Conv(c5, 10, 1),
    )


def pool_later_net(widths: tuple[int, ...] = (8, 8, 12, 8, 12, 20, 24), front_padding: int = 0) -> nn.Module:
    """Three 3x3 convolutions before the pool instead of two (RF 7 there, not 5): more work
    at full resolution for few weights, paid for with narrower layers after it.
    `front_padding=1` keeps those three at 28x28 (14x14 after the pool, 8x8 at GAP): more
    computation again, the same weights. Map sizes in the comments are for no padding."""
    c1, c2, c3, t, c4, s1, s2 = widths
    p = front_padding
    return Net(
        cbr(1, c1, padding=p),
        cbr(c1, c2, padding=p),
        cbr(c2, c3, padding=p),  # 22, RF 7
        nn.MaxPool2d(2),  # 11, RF 8
        Conv(c3, t, 1),
        cbr(t, c4),  # 9, RF 12
        separable(c4, s1, padding=0),  # 7, RF 16
        separable(s1, s2, padding=0),  # 5, RF 20
        nn.AdaptiveAvgPool2d(1),
        Conv(s2, 10, 1),
    )


def pool_later_separable_net(widths: tuple[int, ...] = (8, 8, 12, 12, 16, 24, 28)) -> nn.Module:
    """pool-later with all three layers after the pool separable: the full 3x3's weights
    spent on width instead (`widths` = three front convolutions | transition, three blocks)."""
    c1, c2, c3, t, s0, s1, s2 = widths
    return Net(
        cbr(1, c1),
        cbr(c1, c2),
        cbr(c2, c3),
        nn.MaxPool2d(2),
        Conv(c3, t, 1),
        separable(t, s0, padding=0),
        separable(s0, s1, padding=0),
        separable(s1, s2, padding=0),
        nn.AdaptiveAvgPool2d(1),
        Conv(s2, 10, 1),
    )
