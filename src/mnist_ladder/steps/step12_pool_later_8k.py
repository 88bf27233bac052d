"""Beyond the seed: Step 11's design at Step 9's budget, for 99.5 under 8,000 parameters."""

import dataclasses

from torch import nn

from ..engine import models
from ..engine.step import Step, Variant
from . import step9_adamw

WIDTHS = (10, 12, 16, 12, 16, 32, 44)  # before the pool | transition | after it
RECIPE = dataclasses.replace(step9_adamw.RECIPE, clean_last=5)


def build() -> nn.Module:
    return models.pool_later_net(WIDTHS)


STEP = Step(
    name="step12",
    title="Step 11's design under 8,000: pool later, a clean finish",
    target=(
        *step9_adamw.STEP.target[:2],
        "Step 11's two changes (three convolutions before the pool, the last 5 epochs "
        "unaugmented) at Step 9's budget, chosen on the validation protocol",
    ),
    build=build,
    recipe=RECIPE,
    builds_on="step9",
    analysis=(
        "What took the 4,000-parameter network from Step 7 to Step 11, carried to the 8,000 "
        "budget: three 3x3 convolutions before the max-pool (10, 12, 16 channels) instead of "
        "Step 9's two, then 12 | 16, 32, 44 after it, Step 9's AdamW recipe, and the last 5 of "
        "15 epochs on the digits as they are.",
        "On validation (`step9.pool-later-clean` in Step 9's table) it scored 99.50 and 99.58 "
        "against Step 9's 99.55 and 99.41 on the same two seeds (final epoch); its final "
        "validation loss was higher on seed 1 (0.0187 vs 0.0183) and lower on seed 2 (0.0168 "
        "vs 0.0195): the first change at this budget to beat Step 9 on the mean of its seeds' "
        "accuracy. Pooling later alone (`step8.pool-later`, SGD) and a clean finish alone "
        "(`step9.clean-last-3`) had not. A third seed, run after the choice: 99.38 against "
        "Step 9's 99.39, and a lower loss (0.0199 vs 0.0213).",
        "Why it works here when neither change did alone: the clean finish pays when a network "
        "cannot fit its augmented images (Step 11), and pooling later makes this one spend its "
        "weights on full-resolution features, where it is short; it ends above Step 9 on its "
        "clean training images (about 99.7% against 99.4% augmented).",
        "Its results below are the test protocol, 5 seeds, run after the choice was made.",
        "The search for a 99.6 mean under 8,000 (the frontier issue; the variants below, seeds "
        "1-3 of the validation protocol): the rule, committed in ec6aba6 before any of them "
        "ran, makes the variant with the highest mean of the last 3 epochs' validation "
        "accuracy a step if that mean is above Step 12's own (99.491, `step9.pool-later-clean`"
        "). Their means: separable-tail 99.487, separable-tail-ema 99.484, ema-0.9995 99.467, "
        "batch64 99.456, wide-front 99.450, batch32 99.439. None passed, so no step was made "
        "and none of them ran on the test set: Step 12 stays the closest to the target.",
        "What limits it: at this budget every change moved validation by less than the spread "
        "between seeds (Step 12's own span 99.40-99.57), so three seeds cannot tell a 0.05 "
        "gain from noise, and 99.6 asks for about that much above Step 12. The separable tail "
        "(7,978 parameters) had the lowest validation loss on each seed (0.0173, 0.0163, 0.0191 "
        "against 0.0187, 0.0168, 0.0199) without the accuracy; more seeds per variant would "
        "be the next thing to spend on it. ema-0.9995 changed less than its name says: the "
        "EMA's warm-up, (1 + n) / (10 + n), keeps the decay under 0.9985 for all 15 epochs at "
        "batch 128, so it differs from 0.998 only in the last 3-4 epochs.",
    ),
    params=7_870,
    mean_final_goal=99.5,
    tried=(
        # Towards a 99.6 mean under 8,000 (the frontier issue), on validation, seeds 1-3.
        # The rule, committed before they ran: the one with the highest mean over seeds 1-3
        # of the last 3 epochs' validation accuracy becomes a step if that mean is above Step
        # 12's own validation runs (`step9.pool-later-clean`, same model and recipe). batch32
        # was added before any result of batch64 was seen.
        Variant(
            "batch64",
            "batch 64 instead of 128 (what took Step 11 to Step 13)",
            recipe=dataclasses.replace(RECIPE, batch_size=64),
        ),
        Variant(
            "batch32",
            "batch 32: four times Step 12's optimizer steps",
            recipe=dataclasses.replace(RECIPE, batch_size=32),
        ),
        # Added after batch64's three seeds (below Step 12) and before any of batch32's.
        Variant(
            "ema-0.9995",
            "EMA decay 0.9995 instead of 0.998, meant to average the "
            "clean finish (the EMA's warm-up holds it under 0.9985 within 15 epochs)",
            recipe=dataclasses.replace(RECIPE, ema=0.9995),
        ),
        # Added after batch32's three seeds (below Step 12 too) and before any of ema-0.9995's;
        # at 3,000 a separable tail had scored above a full 3x3 one on its first seed.
        Variant(
            "separable-tail",
            "all three layers after the pool separable, wider (16 | 28, 40, 44): 7,978 parameters",
            build=lambda: models.pool_later_separable_net((10, 12, 16, 16, 28, 40, 44)),
        ),
        Variant(
            "wide-front",
            "a wider front (12, 16, 20) paid for by a separable tail (12 | 24, 24, 40): 7,992 parameters",
            build=lambda: models.pool_later_separable_net((12, 16, 20, 12, 24, 24, 40)),
        ),
        # Added after separable-tail's three seeds (99.487 against 99.491, with a lower
        # validation loss on each seed, as ema-0.9995 had on two) and before wide-front's third.
        Variant(
            "separable-tail-ema",
            "separable-tail's network with ema-0.9995's averaging",
            build=lambda: models.pool_later_separable_net((10, 12, 16, 16, 28, 40, 44)),
            recipe=dataclasses.replace(RECIPE, ema=0.9995),
        ),
    ),
)
