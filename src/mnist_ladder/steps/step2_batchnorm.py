from torch import nn

from ..engine.models import Conv, Net
from ..engine.step import Recipe, SeedResults, Step


def build() -> nn.Module:
    return Net(
        Conv(1, 8, order="cbr"),
        Conv(8, 16, order="cbr"),
        nn.MaxPool2d(2),
        Conv(16, 8, 1, order="cbr"),
        Conv(8, 10, order="cbr"),
        Conv(10, 16, order="cbr"),
        Conv(16, 10, order="cbr"),
        nn.AvgPool2d(6),
    )


STEP = Step(
    name="step2",
    title="Add BatchNorm",
    target=(
        "Add BatchNorm after every convolution so the network trains from the first epoch",
        "Keep the parameters near 5,000",
    ),
    build=build,
    recipe=Recipe(lr=0.01, momentum=0.9),
    analysis=(
        "BatchNorm removes the slow start: the first epoch already lands in the high 90s.",
        "Training accuracy now runs ahead of test accuracy: the model starts to over-fit, "
        "which the next step attacks with dropout.",
    ),
    params=5_088,
    seed=SeedResults(
        5_088,
        (
            95.51,
            97.57,
            98.31,
            98.28,
            97.58,
            98.39,
            98.32,
            98.71,
            98.62,
            98.68,
            98.56,
            98.84,
            98.88,
            98.88,
            99.03,
        ),
        best_train=99.02,
    ),
)
