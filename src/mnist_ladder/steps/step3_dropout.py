from torch import nn

from ..engine.models import Conv, Net
from ..engine.step import Recipe, SeedResults, Step


def build() -> nn.Module:
    def block(cin: int, cout: int, k: int = 3) -> Conv:
        return Conv(cin, cout, k, order="cbdr", dropout=0.10)

    return Net(
        block(1, 8),
        block(8, 16),
        nn.MaxPool2d(2),
        block(16, 8, 1),
        block(8, 10),
        block(10, 16),
        block(16, 10),
        nn.AvgPool2d(6),
    )


STEP = Step(
    name="step3",
    title="Add Dropout",
    target=(
        "Close the train-test gap of Step 2 with Dropout(0.10) after every BatchNorm",
        "Same 5,088 parameters",
    ),
    build=build,
    recipe=Recipe(lr=0.01, momentum=0.9),
    analysis=(
        "Dropout closes the gap: training accuracy now sits at or below test accuracy.",
        "But 10% dropout on a 5k-parameter network costs capacity it does not have: test "
        "accuracy stalls below Step 2's. Less dropout, and more capacity, come next.",
    ),
    params=5_088,
    seed=SeedResults(
        5_088,
        (
            95.51,
            97.01,
            97.09,
            97.95,
            98.26,
            98.20,
            98.28,
            98.60,
            98.20,
            98.53,
            98.70,
            98.76,
            98.65,
            98.76,
            98.64,
        ),
        best_train=97.94,
    ),
)
