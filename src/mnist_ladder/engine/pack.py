"""Seeds trained together: K copies of one network, one a seed, as one network K times wider.

Each seed's layers become one group of a grouped layer: a convolution with `groups=g` becomes
one with `groups=K*g` whose output channels k*C .. k*C+C-1 are seed k's; BatchNorm's
per-channel statistics are then per seed by construction; ReLU, pools and GAP act channel by
channel already; a linear layer becomes K small matrix products. The input carries the K
seeds' own batches as K channels, and the output is [N, K*10]: seed k's logits are columns
10k .. 10k+9. No computation crosses from one group to another, so each seed's gradient is
exactly the gradient it would get alone, and the optimizer, the EMA and weight decay all act
element by element. Every kernel call is K times wider and the per-step fixed costs (Python,
dispatch, the optimizer's launch) are paid once for K seeds.

Only layers whose packed form is known pack: a network with any other module (a user's class
with its own `forward`) is trained one seed after another instead, and `unpackable` names the
layer that stopped it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..core.errors import ConfigError
from . import models

# Containers whose forward only runs their children in order (Conv's fused path included).
CONTAINERS = (nn.Sequential, models.Net, models.Conv)
# Layers that act on each channel alone: the same module serves K seeds.
CHANNELWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    models.MaxPool2d,
    models.MaxPoolCL,
)
PACKED = (nn.Conv2d, nn.BatchNorm2d, models.BatchNormNCHW, nn.Linear, nn.Dropout, models.Dropout)


class PackedLinear(nn.Module):
    """K `nn.Linear(cin, cout)` side by side: [N, K*cin] -> [N, K*cout]. Its state holds
    weight [K, cout, cin] and bias [K, cout], so seed k's are `weight[k]`, `bias[k]`."""

    def __init__(self, seeds: int, cin: int, cout: int, bias: bool = True) -> None:
        super().__init__()
        self.seeds, self.cin, self.cout = seeds, cin, cout
        self.weight = nn.Parameter(torch.empty(seeds, cout, cin))
        self.bias = nn.Parameter(torch.empty(seeds, cout)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_seed = x.reshape(len(x), self.seeds, self.cin).transpose(0, 1)  # [K, N, cin]
        y = torch.bmm(per_seed, self.weight.transpose(1, 2))  # [K, N, cout]
        if self.bias is not None:
            y = y + self.bias.unsqueeze(1)
        return y.transpose(0, 1).reshape(len(x), self.seeds * self.cout)


def unpackable(model: nn.Module) -> str | None:
    """None when `model` packs; else the first layer that does not, and why, in words."""
    for name, module in model.named_modules():
        kind = type(module)
        if kind in CONTAINERS or kind in CHANNELWISE or kind in PACKED:
            if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
                return (
                    f"layer {name or 'the network'} ({kind.__name__}): padding_mode {module.padding_mode!r}"
                )
            continue
        what = f"layer {name}" if name else "the network itself"
        return f"{what} ({kind.__module__}.{kind.__qualname__}) is not one the packer knows"
    return None


def pack(models_: list[nn.Module]) -> nn.Module:
    """One network computing `models_` (same architecture, one a seed) side by side, holding
    exactly their weights and BatchNorm statistics. One model is returned as it is."""
    if len(models_) == 1:
        return models_[0]
    if (why := unpackable(models_[0])) is not None:
        raise ValueError(why)
    return _pack(models_)


def _pack(mods: list[nn.Module]) -> nn.Module:
    first, k = mods[0], len(mods)
    kind = type(first)
    if kind in CONTAINERS:
        packed = copy.copy(first)
        packed._modules = {name: _pack([m._modules[name] for m in mods]) for name in first._modules}
        return packed
    if kind in CHANNELWISE:
        return copy.deepcopy(first)
    if kind is nn.Conv2d:
        c = first
        packed = nn.Conv2d(
            k * c.in_channels,
            k * c.out_channels,
            c.kernel_size,
            stride=c.stride,
            padding=c.padding,
            dilation=c.dilation,
            groups=k * c.groups,
            bias=c.bias is not None,
        )
        _copy(packed, mods, ("weight", "bias"))
        return packed
    if kind in (nn.BatchNorm2d, models.BatchNormNCHW):
        b = first
        packed = kind(k * b.num_features, eps=b.eps, momentum=b.momentum, affine=b.affine)
        _copy(packed, mods, ("weight", "bias", "running_mean", "running_var"))
        if b.num_batches_tracked is not None:
            packed.num_batches_tracked.copy_(b.num_batches_tracked)
        return packed
    if kind is nn.Linear:
        packed = PackedLinear(k, first.in_features, first.out_features, first.bias is not None)
        with torch.no_grad():
            packed.weight.copy_(torch.stack([m.weight for m in mods]))
            if packed.bias is not None:
                packed.bias.copy_(torch.stack([m.bias for m in mods]))
        return packed
    if kind in (nn.Dropout, models.Dropout):  # each seed's mask from its own stream
        return models.Dropout(first.p)
    raise ValueError(f"{kind.__qualname__} is not one the packer knows")  # unpackable said so


def _copy(packed: nn.Module, mods: list[nn.Module], names: tuple[str, ...]) -> None:
    with torch.no_grad():
        for name in names:
            if getattr(packed, name, None) is not None:
                getattr(packed, name).copy_(torch.cat([getattr(m, name) for m in mods]))


def unpack(packed_state: dict[str, torch.Tensor], template: nn.Module, seeds: int, k: int) -> dict:
    """Seed k's state_dict, for a network built like `template`, out of a packed network's."""
    if seeds == 1:
        return dict(packed_state)
    out = {}
    for name, t in template.state_dict().items():
        p = packed_state[name]
        if p.dim() == 0:  # BatchNorm's batch counter: the same for every seed
            out[name] = p.clone()
        elif p.shape[0] == seeds and p.shape[1:] == t.shape:  # a PackedLinear's
            out[name] = p[k].clone()
        else:
            out[name] = p.chunk(seeds)[k].clone()
    return out


MAX_SEEDS = 64  # a group's width: past it, per-seed kernels are wide enough already


class GroupTooLarge(ConfigError):
    """A group of seeds the packer refuses: too many, or more memory than the machine has."""


def memory_estimate(model: nn.Module, seeds: int, batch_size: int, images: int = 60_000) -> int:
    """Bytes a group of `seeds` needs at its peak, about: each seed's augmented epoch (float
    images), and a batch's activations kept for the backward (each layer's output, twice for
    the gradient) measured on one image, with the weights and optimizer state."""
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: sizes.append(o.numel())) for m in model.modules()]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(torch.zeros(1, 1, 28, 28))
            model.train(was)
    finally:
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    per_seed = images * 28 * 28 * 4 + 2 * batch_size * sum(sizes) * 4 + 4 * params * 4
    return seeds * per_seed


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), in bytes; None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_group(model: nn.Module, seeds: int, batch_size: int, device: torch.device) -> None:
    """Refuse, in one line, a group that is too wide or would not fit in memory."""
    if seeds > MAX_SEEDS:
        raise GroupTooLarge(f"{seeds} seeds: at most {MAX_SEEDS} train together; run them in groups")
    if device.type != "cpu":
        return
    need, have = memory_estimate(model, seeds, batch_size), available_memory()
    if have is not None and need > have:
        raise GroupTooLarge(
            f"{seeds} seeds together need about {need / 2**30:.1f} GiB and "
            f"{have / 2**30:.1f} GiB is free: train fewer seeds at once"
        )
