from torch import nn

from ..engine.models import Conv, Net
from ..engine.step import Recipe, SeedResults, Step


def build() -> nn.Module:
    return Net(
        Conv(1, 32, padding=1, bias=True, order="cr"),  # 28
        Conv(32, 64, padding=1, bias=True, order="cr"),  # 28
        nn.MaxPool2d(2),  # 14
        Conv(64, 128, padding=1, bias=True, order="cr"),  # 14
        Conv(128, 256, padding=1, bias=True, order="cr"),  # 14
        nn.MaxPool2d(2),  # 7
        Conv(256, 512, bias=True, order="cr"),  # 5
        Conv(512, 1024, bias=True, order="cr"),  # 3
        Conv(1024, 10, bias=True),  # 1
    )


STEP = Step(
    name="step0",
    title="Basic setup",
    target=(
        "Get the set-up right: data, transforms, loader",
        "A working training and test loop",
        "A baseline to beat: a heavy network with no regard for size",
    ),
    build=build,
    recipe=Recipe(lr=0.01, momentum=0.9),
    analysis=(
        "Extremely heavy model for such a problem: 6.4M parameters.",
        "Training accuracy climbs far above test accuracy: the model over-fits.",
    ),
    params=6_379_786,
    seed=SeedResults(
        6_379_786,
        (
            98.10,
            98.67,
            98.91,
            99.07,
            99.19,
            99.22,
            99.04,
            99.26,
            99.18,
            99.05,
            99.24,
            99.27,
            99.20,
            99.17,
            99.28,
        ),
        best_train=99.93,
    ),
)
