"""The registry of ladder steps: one small file per step, each defining `STEP`."""

from __future__ import annotations

from . import (
    step0_basic_setup,
    step1_skeleton,
    step2_batchnorm,
    step3_dropout,
    step4_capacity,
    step5_augmentation,
    step6_lr_scheduler,
)
from .base import Recipe, SeedResults, Step

_MODULES = (step0_basic_setup, step1_skeleton, step2_batchnorm, step3_dropout,
            step4_capacity, step5_augmentation, step6_lr_scheduler)
STEPS: dict[str, Step] = {m.STEP.name: m.STEP for m in _MODULES}


class UnknownStep(KeyError):
    def __str__(self) -> str:
        return f"unknown step {self.args[0]!r}; valid steps: {', '.join(STEPS)}"


def get(name: str) -> Step:
    if name not in STEPS:
        raise UnknownStep(name)
    return STEPS[name]


__all__ = ["STEPS", "Recipe", "SeedResults", "Step", "UnknownStep", "get"]
