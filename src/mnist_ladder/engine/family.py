"""The ladder's model family as data: the architectures the search explores.

An architecture is a small dict, e.g. the shape of Step 6:

    {"convs1": [8, 16], "transition": 8, "convs2": [10, 16, 18], "head": 16, "dropout": 0.03}

3x3 convolutions (Conv -> ReLU -> BN -> Dropout, Step 6's order) in two groups with a 2x2
max-pool and a plain 1x1 transition between them, global average pooling, an optional 1x1
hidden layer after GAP, and a 1x1 to the ten classes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import LadderError
from .models import Conv, Net, count_parameters
from .step import Recipe, Step

# An architecture may come from a file a user hands us (a model.pt's `arch`): it is checked
# before anything is allocated. The search space's largest model has 19,532 parameters;
# this bound leaves room for any sweep while refusing, say, 10**6 channels (130 GB).
MAX_PARAMS = 1_000_000


class ArchError(LadderError, ValueError):
    """An architecture that is not one of this family's, or too large to build."""


def check(arch: object) -> dict:
    """`arch` if it is a well-formed architecture within MAX_PARAMS, else ArchError."""

    def whole(v: object, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    if not isinstance(arch, dict) or not {"convs1", "transition", "convs2"} <= arch.keys():
        raise ArchError("an architecture is a dict with convs1, transition and convs2")
    convs = (
        [*arch["convs1"], *arch["convs2"]]
        if all(isinstance(arch[k], list) and arch[k] for k in ("convs1", "convs2"))
        else None
    )
    if (
        convs is None
        or not all(whole(c, 1) for c in convs)
        or not whole(arch["transition"], 1)
        or not whole(arch.get("head", 0), 0)
        or not isinstance(arch.get("dropout", 0.0), int | float)
        or not 0.0 <= arch.get("dropout", 0.0) < 1.0
    ):
        raise ArchError(f"not an architecture of the model family: {arch}")
    side = (28 - 2 * len(arch["convs1"])) // 2 - 2 * len(arch["convs2"])  # unpadded 3x3s
    if side < 1:
        raise ArchError(f"{len(convs)} convolutions leave no image to classify: {arch}")
    with torch.device("meta"):  # counted without allocating a single weight
        params = count_parameters(_build(arch))
    if params > MAX_PARAMS:
        raise ArchError(f"{params:,} parameters, over the family's limit of {MAX_PARAMS:,}")
    return arch


def build(arch: dict) -> nn.Module:
    return _build(check(arch))


def _build(arch: dict) -> nn.Module:
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
    return Step(
        name=name,
        title=title,
        target=("found by `ladder sweep`",),
        build=lambda: build(arch),
        recipe=recipe,
        analysis=(),
        params=count_parameters(build(arch)),
    )
