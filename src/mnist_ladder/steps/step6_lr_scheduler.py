from torch import nn

from ..engine.augment import SEED_AUGMENT
from ..engine.models import Conv, Net
from ..engine.step import Recipe, SeedResults, Step


def build() -> nn.Module:
    def block(cin: int, cout: int, k: int = 3) -> Conv:
        return Conv(cin, cout, k, order="crbd", dropout=0.03)  # the seed's Conv->ReLU->BN order

    return Net(
        block(1, 8),  # 26, RF 3
        block(8, 16),  # 24, RF 5
        nn.MaxPool2d(2),  # 12, RF 6
        Conv(16, 8, 1),  # 12: plain 1x1 transition
        block(8, 10),  # 10, RF 10
        block(10, 16),  # 8, RF 14
        block(16, 18),  # 6, RF 18
        nn.AvgPool2d(6),  # GAP
        block(18, 16, 1),  # the extra 1x1 after GAP
        Conv(16, 10, 1),
    )


STEP = Step(
    name="step6",
    title="LR scheduler + one more 1x1 after GAP",
    target=(
        "Add some capacity after GAP (a second 1x1 layer) and stay under 8,000 parameters",
        "Add a OneCycle learning-rate schedule so the last epochs settle",
        "Reach 99.4% test accuracy and hold it over the last epochs",
    ),
    build=build,
    recipe=Recipe(lr=0.015, momentum=0.7, scheduler="onecycle", max_lr=0.015, augment=SEED_AUGMENT),
    analysis=(
        "The model still under-fits (train below test): the augmented training data is harder.",
        "OneCycle's annealing lets the last epochs settle, and the extra 1x1 after GAP adds "
        "capacity where it is cheap: together they took the seed's single run to 99.4 and held "
        "it. Whether that holds for other seeds is what the numbers below say.",
    ),
    params=6_720,
    seed=SeedResults(
        6_720,
        (
            96.34,
            98.02,
            98.44,
            98.95,
            99.06,
            99.24,
            99.23,
            99.36,
            99.29,
            99.53,
            99.49,
            99.46,
            99.53,
            99.45,
            99.50,
        ),
        best_train=98.43,
    ),
)
