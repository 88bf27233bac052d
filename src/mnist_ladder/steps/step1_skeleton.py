from torch import nn

from ..engine.models import Conv, Net
from ..engine.step import Recipe, SeedResults, Step


def build() -> nn.Module:
    return Net(
        Conv(1, 8, order="cr"),  # 26, RF 3
        Conv(8, 16, order="cr"),  # 24, RF 5
        nn.MaxPool2d(2),  # 12, RF 6
        Conv(16, 8, 1, order="cr"),  # 12: 1x1 transition
        Conv(8, 10, order="cr"),  # 10, RF 10
        Conv(10, 10, order="cr"),  # 8, RF 14
        Conv(10, 16, order="cr"),  # 6, RF 18
        Conv(16, 10, 1),  # 6: 1x1 to the 10 classes
        nn.AvgPool2d(6),  # 1: GAP
    )


STEP = Step(
    name="step1",
    title="Basic skeleton",
    target=(
        "Get the shape of the network right: two convolutions, max-pool, a 1x1 transition, "
        "three convolutions, GAP",
        "Cut the parameters from 6.4M to under 5,000 before tuning anything",
        "Reach a receptive field of about 18 pixels before GAP, enough for MNIST strokes",
    ),
    build=build,
    recipe=Recipe(lr=0.01, momentum=0.9),
    analysis=(
        "A 4,572-parameter skeleton learns MNIST, but with no normalization it can sit at "
        "chance for the first epochs (the seed's run did, at 12.85 and 15.35).",
        "Its test accuracy stays well short of 99.4: the skeleton needs help to train, not "
        "just more parameters.",
    ),
    params=4_572,
    seed=SeedResults(
        4_572,
        (
            12.85,
            15.35,
            89.90,
            95.52,
            96.79,
            96.01,
            97.79,
            97.83,
            97.94,
            97.52,
            98.05,
            98.22,
            98.26,
            98.08,
            98.43,
        ),
    ),
)
