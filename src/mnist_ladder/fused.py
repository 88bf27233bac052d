"""BatchNorm with its neighbouring ReLU and dropout as one autograd function, for CPU training.

Why by hand: torch's CPU BatchNorm on a channels-last map walks it C values at a time, and
with the ladder's few channels that is slow: at Step 6's first block ([128, 8, 26, 26], bf16)
its forward took 1.1 ms where the same kernel on the same memory viewed as 128 "channels"
takes 0.14 ms. So the map is viewed as rows of `tile` = C * k values (k copies of the
channel vector), torch's own kernels run on that 2-D view at full vector width (statistics
per column, the normalization as an eval-mode BatchNorm with the channel statistics tiled,
the gradient's reductions from its backward kernel), and the k column statistics fold into
the C channel statistics exactly. Dropout's scale folds into the normalization's weight and
bias and its hits are zeroed in place: no mask, no extra pass. Statistics and weight
gradients are fp32 whatever the activations' precision, as in torch's kernel. `Conv.forward`
(models.py) uses it when training on the CPU in channels-last; everything else (eval, CUDA,
other layouts, hooks) runs the modules one by one.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

MAX_TILE = 128  # values a row: full vector registers, and any batch size divides it out

aten = torch.ops.aten


def tile_factor(channels: int, positions: int) -> int:
    """k: the largest power of two with k * channels <= MAX_TILE that divides `positions`."""
    k = 1
    while k * 2 * channels <= MAX_TILE and positions % (k * 2) == 0:
        k *= 2
    return k


def dropout_hits(n: int, p: float) -> torch.Tensor:
    """The positions a dropout of rate p drops among n elements: a Poisson number of uniform
    positions (see `models.Dropout`); both paths draw them this way, so they drop the same."""
    hits = int(torch.poisson(torch.tensor(-n * math.log1p(-p), dtype=torch.float64)))
    return torch.randint(0, n, (hits,))


def _rows(t: torch.Tensor, tile: int) -> torch.Tensor:
    """A channels-last [N, C, H, W] tensor as rows of `tile` values (a view, no copy)."""
    return t.permute(0, 2, 3, 1).reshape(-1, tile)


def _tiled(k: int, *vectors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-channel vectors repeated k times to match `_rows`, in one copy (small ops cost
    more here than the values they move)."""
    return torch.stack(vectors).repeat(1, k).unbind()


class _NormBlock(torch.autograd.Function):
    """y = post(dropout(BN(pre(z)))): pre is ReLU or identity, post ReLU or identity."""

    @staticmethod
    @torch.autocast("cpu", enabled=False)  # bf16 activations, fp32 statistics and parameters
    def forward(ctx, z, weight, bias, eps, pre_relu, post_relu, keep, hits):
        n, c, h, w = z.shape
        k = tile_factor(c, n * h * w)
        a = _rows(z, c * k)
        if pre_relu:
            a = a.relu()
        # column statistics (fp32), folded k -> 1 by the parallel-variance rule
        # (fp32 running buffers make the kernel return fp32 statistics for bf16 input too)
        scratch = torch.zeros(2, c * k)
        col_mean, col_var = torch.batch_norm_update_stats(a, scratch[0], scratch[1], 0.0)
        col_mean, col_var = col_mean.view(k, c), col_var.view(k, c)
        mean = col_mean.mean(0)
        var = col_var.mean(0) + (col_mean - mean).square().mean(0)
        invstd = torch.rsqrt(var + eps)
        wf, bf = weight.detach().float(), bias.detach().float()
        scale, shift, tiled_mean, tiled_var = _tiled(k, wf * keep, bf * keep, mean, var)
        y = aten.native_batch_norm(a, scale, shift, tiled_mean, tiled_var, False, 0.0, eps)[0]
        if hits is not None:
            y.view(-1).index_fill_(0, hits, 0)
        if post_relu:
            y.relu_()
        ctx.save_for_backward(a, y if post_relu else None, wf, mean, invstd, hits)
        ctx.shape, ctx.flags = (n, h, w, c), (pre_relu, post_relu, keep, weight.dtype)
        ctx.mark_non_differentiable(mean, var)
        return y.view(n, h, w, c).permute(0, 3, 1, 2), mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        a, y, wf, mean, invstd, hits = ctx.saved_tensors
        pre_relu, post_relu, keep, weight_dtype = ctx.flags
        n, h, w, c = ctx.shape
        k = a.shape[1] // c
        dy = _rows(dy.contiguous(memory_format=torch.channels_last), c * k)
        # the gradient past the ReLU after BatchNorm, in a tensor of its own if hits are zeroed
        g = (aten.threshold_backward(dy, y, 0) if post_relu
             else dy.clone() if hits is not None else dy)
        if hits is not None:
            g.view(-1).index_fill_(0, hits, 0)
        # per column: sum g (x - mean) invstd and sum g, with the channel's mean and invstd
        col_dgamma, col_dbeta = aten.native_batch_norm_backward(
            g, a, None, None, None, *_tiled(k, mean, invstd), True, 0.0, [False, True, True])[1:]
        # g' = keep * g is the gradient at BatchNorm's output
        dgamma = keep * col_dgamma.view(k, c).sum(0)
        dbeta = keep * col_dbeta.view(k, c).sum(0)
        count = a.numel() // c
        # BatchNorm's input gradient, expanded: da = coef_g g + coef_a a + const per channel
        coef_g = wf * invstd * keep
        coef_a = -wf * invstd.square() * dgamma / count
        const = -wf * invstd * dbeta / count - coef_a * mean
        ones = torch.ones_like(mean)
        coef_a, const, zeros, ones, coef_g = _tiled(k, coef_a, const, ones - 1, ones, coef_g)
        # coef_a a + const in one pass: an eval-mode BatchNorm with mean 0 and variance 1
        da = aten.native_batch_norm(a, coef_a, const, zeros, ones, False, 0.0, 0.0)[0]
        da = torch.addcmul(da, g, coef_g.to(da.dtype))
        if pre_relu:
            da = aten.threshold_backward(da, a, 0)
        dz = da.view(n, h, w, c).permute(0, 3, 1, 2)
        return dz, dgamma.to(weight_dtype), dbeta.to(weight_dtype), None, None, None, None, None


def fusable(order: str) -> bool:
    """Whether a block is conv, [ReLU], BatchNorm, [ReLU and dropout in either order]: what
    `norm_block` computes (dropout commutes with a ReLU: both keep zeros, the scale is > 0)."""
    return (re.fullmatch(r"cr?b[rd]*", order) is not None
            and order.count("r") <= 1 and order.count("d") <= 1)


def can_fuse(x: torch.Tensor, bn: nn.Module, training: bool) -> bool:
    return (training and x.device.type == "cpu" and x.dim() == 4
            and x.dtype in (torch.float32, torch.bfloat16)  # fp32 statistics for these two
            and x.is_contiguous(memory_format=torch.channels_last)
            and type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats
            and not torch.compiler.is_compiling())


def norm_block(z: torch.Tensor, bn: nn.BatchNorm2d, *, pre_relu: bool, post_relu: bool,
               p: float) -> torch.Tensor:
    """`bn`'s training forward on channels-last `z` with the ReLU before and/or after it and a
    dropout of rate p (0: none); updates `bn`'s running statistics as torch does."""
    hits = dropout_hits(z.numel(), p) if p > 0 else None
    keep = 1 / (1 - p) if p > 0 else 1.0
    y, mean, var = _NormBlock.apply(z, bn.weight, bn.bias, bn.eps, pre_relu, post_relu, keep, hits)
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1 / float(bn.num_batches_tracked)
        count = z.numel() // z.shape[1]
        bn.running_mean.lerp_(mean, momentum)
        bn.running_var.lerp_(var * (count / max(count - 1, 1)), momentum)
    return y
