"""The ladder's model family as data: the architectures the search explores.

An architecture is a small dict, e.g. the shape of Step 6:

    {"convs1": [8, 16], "transition": 8, "convs2": [10, 16, 18], "head": 16, "dropout": 0.03}

3x3 convolutions (Conv -> ReLU -> BN -> Dropout, Step 6's order) in two groups with a 2x2
max-pool and a plain 1x1 transition between them, global average pooling, an optional 1x1
hidden layer after GAP, and a 1x1 to the ten classes.
"""

from __future__ import annotations

from torch import nn

from .models import Conv, Net
from .steps import Recipe, Step


def build(arch: dict) -> nn.Module:
    p = float(arch.get("dropout", 0.0))

    def block(cin: int, cout: int, k: int = 3) -> Conv:
        return Conv(cin, cout, k, order="crbd" if p else "crb", dropout=p)

    layers: list[nn.Module] = []
    cin = 1
    for c in arch["convs1"]:
        layers.append(block(cin, c))
        cin = c
    layers += [nn.MaxPool2d(2), Conv(cin, arch["transition"], 1)]
    cin = arch["transition"]
    for c in arch["convs2"]:
        layers.append(block(cin, c))
        cin = c
    layers.append(nn.AdaptiveAvgPool2d(1))
    if arch.get("head"):
        layers.append(block(cin, arch["head"], 1))
        cin = arch["head"]
    layers.append(Conv(cin, 10, 1))
    return Net(*layers)


def as_step(name: str, arch: dict, recipe: Recipe, title: str = "searched architecture") -> Step:
    from .models import count_parameters
    return Step(name=name, title=title, target=("found by `ladder sweep`",),
                build=lambda: build(arch), recipe=recipe, analysis=(), params=count_parameters(build(arch)))
