"""The registry of ladder steps: one small file per step, each defining `STEP`."""

from __future__ import annotations

import ast
import functools
import types
from pathlib import Path

from ..core.errors import LadderError
from ..engine.identity import fingerprint
from ..engine.step import Recipe, SeedResults, Step, Variant
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

_MODULES = (
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
STEPS: dict[str, Step] = {m.STEP.name: m.STEP for m in _MODULES}
_BY_MODULE = {m.__name__: m for m in _MODULES}
# Each built-in step's file in the repository: what `git show COMMIT:FILE` checks.
FILES: dict[str, str] = {
    m.STEP.name: f"src/mnist_ladder/steps/{m.__name__.rpartition('.')[2]}.py" for m in _MODULES
}


def _step_modules(module: types.ModuleType) -> list[types.ModuleType]:
    """`module` and every step module it imports, directly or through another."""
    found: dict[str, types.ModuleType] = {}
    todo = [module]
    while todo:
        m = todo.pop()
        if m.__name__ in found:
            continue
        found[m.__name__] = m
        for node in ast.walk(ast.parse(Path(m.__file__).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                todo += [_BY_MODULE[f"{__name__}.{n}"] for n in names if f"{__name__}.{n}" in _BY_MODULE]
    return [found[k] for k in sorted(found)]


@functools.cache
def network_fingerprint(name: str) -> str:
    """A built-in step's network and recipe as code: its file and every step file it imports
    (Step 13's imports Step 7's and Step 11's), prose left out (`engine.identity`)."""
    module = next(m for m in _MODULES if m.STEP.name == name.partition(".")[0])
    return "+".join(fingerprint(Path(m.__file__).read_text()) for m in _step_modules(module))


class UnknownStep(LadderError, KeyError):
    """A step name that is neither built in nor the user's: the message names the valid ones."""

    def __init__(self, name: str, known: tuple[str, ...] | None = None) -> None:
        super().__init__(name, known)

    def __str__(self) -> str:
        known = self.args[1] or tuple(STEPS)
        variants = [f"{s.name}.{v.name}" for s in STEPS.values() for v in s.tried]
        return (
            f"unknown step {self.args[0]!r}; valid steps: {', '.join(known)}"
            + (f"; variants: {', '.join(variants)}" if variants else "")
            + "; or the path of a step file (.py)"
        )


def get(name: str, among: dict[str, Step] | None = None) -> Step:
    """The one resolver of step names: a step by name, or one of its tried variants as
    `STEP.VARIANT`, among the built-in ladder (or `among`: the catalog's merged one)."""
    table = STEPS if among is None else among
    known = None if among is None else tuple(among)
    parent, _, variant = name.partition(".")
    if parent not in table:
        raise UnknownStep(name, known)
    if not variant:
        return table[parent]
    try:
        return table[parent].variant(variant)
    except KeyError:
        raise UnknownStep(name, known) from None


__all__ = [
    "FILES",
    "STEPS",
    "Recipe",
    "SeedResults",
    "Step",
    "UnknownStep",
    "Variant",
    "get",
    "network_fingerprint",
]
