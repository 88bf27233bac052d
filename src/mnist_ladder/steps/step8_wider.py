"""Beyond the seed: 99.5 under 8,000 parameters, the Step 7 design made wider."""

from torch import nn

from ..models import Conv, Net, separable
from .base import Step
from .step7_separable import RECIPE, block


def build() -> nn.Module:
    return Net(
        block(1, 10),  # 26, RF 3
        block(10, 20),  # 24, RF 5
        nn.MaxPool2d(2),  # 12, RF 6
        Conv(20, 12, 1),  # 12
        block(12, 20),  # 10, RF 10
        separable(20, 32, padding=0),  # 8, RF 14
        separable(32, 40, padding=0),  # 6, RF 18
        nn.AdaptiveAvgPool2d(1),
        Conv(40, 10, 1),
    )


STEP = Step(
    name="step8",
    title="Step 7 made wider: 99.5 under 8,000 parameters",
    target=(
        "Fewer than 8,000 parameters",
        "Mean final test accuracy ≥ 99.5 over 5 seeds",
    ),
    build=build,
    recipe=RECIPE,
    analysis=(
        "The same design and recipe as Step 7, with the parameters the seed's budget leaves: "
        "wider layers everywhere (10, 20 | 12 | 20, 32, 40 channels instead of 8, 16 | 8 | "
        "12, 20, 24).",
        "Against Step 6 (6,720 parameters): no dropout, no head after GAP, separable last "
        "layers, and Step 7's recipe.",
    ),
    params=7_322,
)
