"""Beyond the seed: Step 11 with batch 64, for 99.4 held under 4,000 parameters."""

import dataclasses

from ..engine import models
from ..engine.step import Step, Variant
from . import step7_separable, step11_clean_finish

RECIPE = dataclasses.replace(step11_clean_finish.RECIPE, batch_size=64)
NARROW_3K = (6, 8, 10, 8, 10, 14, 20)  # Step 13's widths cut to 2,978 parameters
SEPARABLE_3K = (8, 8, 10, 8, 16, 16, 24)  # 2,980: every layer after the pool separable
FRONT_3K = (8, 8, 12, 8, 14, 16, 20)  # 2,962: Step 13's front whole, a separable tail
FRONT_3K_FULL = (8, 8, 12, 6, 10, 12, 18)  # 2,974: Step 13's front whole, its tail narrowed


STEP = Step(
    name="step13",
    title="Twice the steps: batch 64",
    target=step7_separable.STEP.target,
    build=step11_clean_finish.STEP.build,  # the same network
    recipe=RECIPE,
    builds_on="step11",
    analysis=(
        "Step 11's network (3,888 parameters) and recipe, with one change: batches of 64 "
        "images instead of 128, so twice the optimizer steps in the same 15 epochs (and the "
        "same OneCycle schedule over them).",
        "Why: Step 11 still fits its clean training images only to about 99.5%; a network "
        "this short of capacity is limited by how far 15 epochs' worth of updates take it, "
        "and more, noisier steps are the one thing that costs no parameters. At Step 7 (SGD, "
        "no clean finish) batch 64 had moved validation by no more than the spread between "
        "seeds; with AdamW and the clean finish it did better.",
        "On validation (`step11.batch64` in Step 11's table, seeds 1-3) it scored 99.43, "
        "99.47 and 99.32 against Step 11's 99.42, 99.38 and 99.32 (`step10.clean-last-5`), "
        "with a lower mean validation loss (0.0214 vs 0.0224). The rule, written down midway "
        "(after its first seed, before its second and third and before `padded-front` ran): "
        "the highest mean of the last 3 epochs' validation accuracy over three seeds, if above "
        "Step 11's, with no higher loss (here 99.41 vs 99.39).",
        "Its results below are the test protocol, 5 seeds, run after the choice was made.",
    ),
    params=3_888,
    tried=(
        # Towards 3,000 parameters (the frontier issue), on the validation protocol, seeds 1-3.
        # The rule, committed before any of them ran: the variant with the highest mean over
        # seeds 1-3 of its last 3 epochs' validation accuracy becomes the <= 3,000 step.
        Variant(
            "narrow-3k",
            "every width cut (6, 8, 10 | 8 | 10, 14, 20): 2,978 parameters",
            build=lambda: models.pool_later_net(NARROW_3K),
        ),
        Variant(
            "separable-3k",
            "all three layers after the pool separable (8, 8, 10 | 8 | 16, 16, 24): 2,980 parameters",
            build=lambda: models.pool_later_separable_net(SEPARABLE_3K),
        ),
        # Added after narrow-3k's first two seeds (below Step 13 by about 0.17) and before any
        # other variant's result: the cut taken from after the pool only.
        Variant(
            "front-3k",
            "Step 13's three front convolutions kept whole (8, 8, 12); all "
            "three layers after the pool separable (8 | 14, 16, 20): 2,962 parameters",
            build=lambda: models.pool_later_separable_net(FRONT_3K),
        ),
        Variant(
            "front-3k-full",
            "Step 13's front kept whole; after the pool 6 | 10, 12, 18: 2,974 parameters",
            build=lambda: models.pool_later_net(FRONT_3K_FULL),
        ),
        # Batch 32 was declared for narrow-3k and separable-3k and dropped unrun once their
        # first seeds scored lowest (99.26 and 99.19); added instead, after front-3k's first
        # seed (99.33, the best then) and before any of front-3k-full's:
        Variant(
            "front-3k-batch32",
            "front-3k with batch 32 (twice Step 13's steps again)",
            build=lambda: models.pool_later_separable_net(FRONT_3K),
            recipe=dataclasses.replace(RECIPE, batch_size=32),
        ),
    ),
)
