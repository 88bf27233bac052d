"""Beyond the seed: at most 3,000 parameters, aiming to hold 99.4 (the report says whether it does)."""

from torch import nn

from ..engine import models
from ..engine.step import Step
from . import step13_batch64

RECIPE = step13_batch64.STEP.variant("front-3k-batch32").recipe  # Step 13's, batch 32


def build() -> nn.Module:
    return models.pool_later_separable_net(step13_batch64.FRONT_3K)


STEP = Step(
    name="step14",
    title="Under 3,000: Step 13's front whole, a separable tail, batch 32",
    target=(
        "At most 3,000 parameters (BatchNorm affine included)",
        "Test accuracy ≥ 99.4 in each of the last 3 of 15 epochs, for the mean of 5 seeds and "
        "for at least 4 of the 5 seeds on their own",
        "Chosen on the validation protocol by a rule committed before the candidates ran; the "
        "step file committed before its first test-protocol run",
    ),
    build=build,
    recipe=RECIPE,
    builds_on="step13",
    analysis=(
        "Step 13's network cut by 926 parameters to 2,962: its three 3x3 convolutions before "
        "the pool kept whole (8, 8, 12 channels on 26, 24 and 22 pixel maps), the transition "
        "to 8 channels, then all three layers after the pool depthwise-separable (14, 16, 20 "
        "channels) where Step 13 had one full 3x3 and two separable; Step 13's recipe (AdamW, "
        "OneCycle, the last 5 epochs unaugmented) with batch 32 instead of 64.",
        "How it was chosen (the variants are Step 13's `tried` table; every one ran on seeds "
        "1-3 of the validation protocol, the test set never evaluated): the rule, committed "
        "in ec6aba6 before any of them ran, takes the highest mean over the three seeds of the "
        "last 3 epochs' validation accuracy. Those means: front-3k-batch32 99.280, front-3k "
        "99.279, separable-3k 99.266, narrow-3k 99.256, front-3k-full 99.230; Step 13 itself "
        "(3,888 parameters, `step11.batch64`) 99.408. The first two are tied within one "
        "validation image over nine epoch evaluations; the rule as written picks batch 32.",
        "What the search says: where the 926 parameters come from matters less than that they "
        "go. Every 3,000-parameter variant sits 0.13-0.18 points below Step 13 on validation, "
        "and the spread among them (0.05) is about the spread between seeds. Keeping the full-"
        "resolution front whole and making the tail separable ranked first; narrowing the "
        "front (narrow-3k, separable-3k) or keeping a full 3x3 after the pool with a narrower "
        "tail (front-3k-full) ranked below it. Halving the batch again did not add what "
        "batch 64 added at Step 13.",
        "What limits it, written before its test runs: Step 13 held 99.4 on the test set with "
        "a small margin, and this network starts about 0.13 lower on validation, so it is "
        "expected at or just under the line; the test protocol below decides. A network this "
        "small fits its clean training digits only to about 99.3% by the last epoch on "
        "validation (Step 13: 99.5): capacity, not the schedule, is what runs out.",
    ),
    params=2_962,
)
