"""Beyond the seed: at most 4,000 parameters, aiming to hold 99.4 (the report says whether it does).

Step 6's shape (two 3x3 convolutions, max-pool, a 1x1 transition, three convolutions, GAP)
with its last two convolutions depthwise-separable, no dropout and no head after GAP, trained
with a recipe for small networks.
"""

import dataclasses

from torch import nn

from ..engine.augment import Augment
from ..engine.models import (
    Conv,
    Dropout,
    Net,
    all_full_net,
    cbr,
    pool_later_net,
    pool_later_separable_net,
    separable,
    separable_net,
    spatial_head_net,
)
from ..engine.step import Recipe, Step, Variant
from . import step6_lr_scheduler


def build_bn_after_depthwise() -> nn.Module:
    def sep(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(Conv(cin, cin, 3, groups=cin, order="cb"), Conv(cin, cout, 1, order="cbr"))

    return Net(
        cbr(1, 8),
        cbr(8, 16),
        nn.MaxPool2d(2),
        Conv(16, 8, 1),
        cbr(8, 12),
        sep(12, 20),
        sep(20, 24),
        nn.AdaptiveAvgPool2d(1),
        Conv(24, 10, 1),
    )


def build_with_dropout() -> nn.Module:
    def drop(p: float = 0.03) -> nn.Module:
        return Dropout(p)

    return Net(
        cbr(1, 8),
        drop(),
        cbr(8, 16),
        drop(),
        nn.MaxPool2d(2),
        Conv(16, 8, 1),
        cbr(8, 12),
        drop(),
        separable(12, 20, padding=0),
        drop(),
        separable(20, 24, padding=0),
        drop(),
        nn.AdaptiveAvgPool2d(1),
        Conv(24, 10, 1),
    )


def build_separable_early() -> nn.Module:
    return Net(
        cbr(1, 8),
        separable(8, 16, padding=0),
        nn.MaxPool2d(2),
        Conv(16, 10, 1),
        cbr(10, 14),
        separable(14, 28, padding=0),
        separable(28, 32, padding=0),
        nn.AdaptiveAvgPool2d(1),
        Conv(32, 10, 1),
    )


def build_separable_all() -> nn.Module:
    return Net(
        cbr(1, 8),
        separable(8, 16, padding=0),
        nn.MaxPool2d(2),
        Conv(16, 12, 1),
        separable(12, 24, padding=0),
        separable(24, 32, padding=0),
        separable(32, 36, padding=0),
        nn.AdaptiveAvgPool2d(1),
        Conv(36, 10, 1),
    )


def build_padded_two_pools() -> nn.Module:
    """First design: padded 28x28 and 14x14 maps, two pools, four separable blocks."""
    return Net(
        cbr(1, 8, padding=1),
        cbr(8, 12, padding=1),
        nn.MaxPool2d(2),
        separable(12, 16),
        separable(16, 20),
        nn.MaxPool2d(2),
        separable(20, 28),
        separable(28, 28),
        nn.AdaptiveAvgPool2d(1),
        Conv(28, 10, 1),
    )


AUGMENT = Augment(degrees=10, translate=0.1, scale=(0.9, 1.1))
RECIPE = Recipe(
    optimizer="sgd",
    lr=0.004,
    momentum=0.9,
    nesterov=True,
    weight_decay=1e-4,
    scheduler="onecycle",
    max_lr=0.1,
    pct_start=0.25,
    ema=0.998,
    augment=AUGMENT,
)

ADAMW = dataclasses.replace(RECIPE, optimizer="adamw", lr=0.0004, max_lr=0.01, weight_decay=0.01)

STEP = Step(
    name="step7",
    title="Depthwise-separable, at most 4,000 parameters",
    target=(
        "At most 4,000 parameters (BatchNorm affine included)",
        "Test accuracy ≥ 99.4 in each of the last 3 of 15 epochs, for the mean of 5 seeds and "
        "for at least 4 of the 5 seeds on their own",
        "Designed and tuned on the validation protocol only; the test set is used for the final runs",
    ),
    build=separable_net,
    recipe=RECIPE,
    analysis=(
        "Depthwise-separable blocks give the last two layers their width (20 and 24 channels) "
        "for a fraction of a full 3x3 convolution's weights.",
        "The recipe is what a small network needs: no dropout (it under-fits already), milder "
        "augmentation, a OneCycle schedule with a higher peak and Nesterov momentum, and an "
        "exponential moving average of the weights, meant to steady the last epochs (compare "
        "`step7.no-ema` below: at this size it is not what limits accuracy).",
        "What the design runs below say: at this size, parameters are what is missing. Step 6's "
        "network under the same recipe is the one clear step up; spending the same ~4,000 "
        "parameters differently (full 3x3 only, wider or earlier "
        "separable blocks, BatchNorm after depthwise, dropout, batch 64, a higher peak LR) "
        "moves validation accuracy by about the spread between seeds; label smoothing and "
        "dropping augmentation cost accuracy, and Step 6's own recipe costs most. Elastic "
        "distortion, the classic MNIST augmentation, lowers validation accuracy too, and a "
        "learned spatial weighting per class in place of GAP (the rest of the 4,000) does not "
        "raise it.",
        "Later design runs (after Steps 8-9 found AdamW): pooling after three 3x3 "
        "convolutions instead of two, with narrower layers after the pool, and AdamW each moved "
        "validation by about the spread between seeds; together they were the best of this "
        "family and became Step 10. Making every layer after the pool separable instead, or "
        "lighter weight decay, did not add to it.",
        "Validation images are the last 10,000 training images, written by the same people as "
        "the training images; MNIST's test writers are different people. Validation therefore "
        "rewards fitting the training writers, and can rank augmentation and regularization "
        "differently from the test set: compare each step's val and test numbers.",
    ),
    params=3_624,
    tried=(
        Variant(
            "seed-net", "Step 6's network (6,720 parameters) with this recipe", build=step6_lr_scheduler.build
        ),
        Variant(
            "padded-two-pools",
            "padded 28x28/14x14 maps, two pools, four separable blocks",
            build=build_padded_two_pools,
        ),
        Variant(
            "wider",
            "the separable blocks wider: 24 and 28 channels",
            build=lambda: separable_net((8, 16, 8, 12, 24, 28)),
        ),
        Variant("batch64", "batch size 64 instead of 128", recipe=dataclasses.replace(RECIPE, batch_size=64)),
        Variant(
            "light-augment",
            "half the augmentation: ±5°, ±5% shift, scale 0.95-1.05",
            recipe=dataclasses.replace(RECIPE, augment=AUGMENT.scaled(0.5)),
        ),
        Variant("no-ema", "no weight averaging", recipe=dataclasses.replace(RECIPE, ema=0.0)),
        Variant(
            "seed-recipe",
            "Step 6's recipe (SGD 0.015, momentum 0.7, OneCycle, the seed's augmentation)",
            recipe=step6_lr_scheduler.STEP.recipe,
        ),
        Variant(
            "label-smoothing", "label smoothing 0.1", recipe=dataclasses.replace(RECIPE, label_smoothing=0.1)
        ),
        Variant(
            "peak-lr-0.2",
            "OneCycle peak learning rate 0.2 instead of 0.1",
            recipe=dataclasses.replace(RECIPE, max_lr=0.2, lr=0.008),
        ),
        Variant(
            "bn-after-depthwise",
            "BatchNorm after each depthwise convolution too",
            build=build_bn_after_depthwise,
        ),
        Variant(
            "no-augment", "no augmentation at all", recipe=dataclasses.replace(RECIPE, augment=Augment())
        ),
        Variant("dropout", "Dropout(0.03) after every 3x3 block, as in Step 6", build=build_with_dropout),
        Variant(
            "separable-early",
            "the second 3x3 separable too; the savings spent on width after the pool (14, 28, 32 channels)",
            build=build_separable_early,
        ),
        Variant(
            "separable-all",
            "every convolution after the first separable; width after the pool 24, 32, 36",
            build=build_separable_all,
        ),
        Variant("all-full", "full 3x3 convolutions only, narrower", build=all_full_net),
        Variant(
            "elastic",
            "elastic distortion added: ±1.5 px at 4x4 control points",
            recipe=dataclasses.replace(RECIPE, augment=dataclasses.replace(AUGMENT, elastic=1.5)),
        ),
        Variant(
            "spatial-head",
            "a learned 6x6 weighting per class instead of GAP (1x1 to the classes, then a depthwise 6x6)",
            build=spatial_head_net,
        ),
        Variant(
            "pool-later",
            "three 3x3 convolutions before the pool (8, 8, 12 channels), narrower after it (8 | 12, 20, 24)",
            build=pool_later_net,
        ),
        Variant("adamw", "AdamW (OneCycle peak 0.01, weight decay 0.01) instead of SGD", recipe=ADAMW),
        Variant(
            "adamw-light-decay",
            "AdamW with weight decay 0.001 (a tenth)",
            recipe=dataclasses.replace(ADAMW, weight_decay=0.001),
        ),
        Variant("pool-later-adamw", "pool-later's network with AdamW", build=pool_later_net, recipe=ADAMW),
        Variant(
            "pool-later-separable-adamw",
            "pool-later with separable layers after the pool, wider (12 | 16, 24, 28), and AdamW",
            build=pool_later_separable_net,
            recipe=ADAMW,
        ),
    ),
)
