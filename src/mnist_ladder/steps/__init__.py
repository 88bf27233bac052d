"""The registry of ladder steps: one small file per step, each defining `STEP`."""

from __future__ import annotations

import sys
import types

from . import (
    step0_basic_setup,
    step1_skeleton,
    step2_batchnorm,
    step3_dropout,
    step4_capacity,
    step5_augmentation,
    step6_lr_scheduler,
    step7_separable,
    step8_wider,
    step9_adamw,
    step10_pool_later,
    step11_clean_finish,
    step12_pool_later_8k,
    step13_batch64,
    step14_under_3k,
)
from .base import Recipe, SeedResults, Step, Variant

_MODULES = (step0_basic_setup, step1_skeleton, step2_batchnorm, step3_dropout,
            step4_capacity, step5_augmentation, step6_lr_scheduler, step7_separable, step8_wider,
            step9_adamw, step10_pool_later, step11_clean_finish,
            step12_pool_later_8k, step13_batch64, step14_under_3k)
STEPS: dict[str, Step] = {m.STEP.name: m.STEP for m in _MODULES}
# Each built-in step's file in the repository: what `git show COMMIT:FILE` checks.
FILES: dict[str, str] = {m.STEP.name: f"src/mnist_ladder/steps/{m.__name__.rpartition('.')[2]}.py"
                         for m in _MODULES}


class UnknownStep(KeyError):
    """A step name that is neither built in nor the user's: the message names the valid ones."""

    def __init__(self, name: str, known: tuple[str, ...] | None = None) -> None:
        super().__init__(name, known)

    def __str__(self) -> str:
        known = self.args[1] or tuple(STEPS)
        variants = [f"{s.name}.{v.name}" for s in STEPS.values() for v in s.tried]
        return (f"unknown step {self.args[0]!r}; valid steps: {', '.join(known)}"
                + (f"; variants: {', '.join(variants)}" if variants else "")
                + "; or the path of a step file (.py)")


def get(name: str) -> Step:
    """A ladder step by name, or one of its tried variants as `STEP.VARIANT`."""
    parent, _, variant = name.partition(".")
    if parent not in STEPS:
        raise UnknownStep(name)
    if not variant:
        return STEPS[parent]
    try:
        return STEPS[parent].variant(variant)
    except KeyError:
        raise UnknownStep(name) from None


class _Steps(types.ModuleType):
    """This package is also `ml.steps()`, the API's list of steps: a module can be called once
    its class says how (the documented `module.__class__` hook), so that `mnist_ladder.steps`
    stays the registry every module imports while notebooks get the short call."""

    def __call__(self, steps_dir: str | None = None) -> dict[str, Step]:
        """Every step by name: the built-in ladder, then yours (`./steps`, or `steps_dir`)."""
        from ..catalog import catalog
        return catalog(steps_dir).steps


sys.modules[__name__].__class__ = _Steps

__all__ = ["FILES", "STEPS", "Recipe", "SeedResults", "Step", "UnknownStep", "Variant", "get"]
