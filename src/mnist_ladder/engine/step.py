"""What a ladder step is: a target, a model, a recipe and an analysis, in one definition."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from torch import nn

from .augment import Augment


@dataclass(frozen=True)
class Recipe:
    epochs: int = 15
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    decay_norm_and_bias: bool = True  # False: BatchNorm's affine and biases are not decayed
    scheduler: str = "none"  # none | onecycle | step
    max_lr: float = 0.0  # onecycle
    pct_start: float = 0.3  # onecycle
    step_size: int = 0  # step: epochs between decays
    gamma: float = 0.1  # step
    label_smoothing: float = 0.0
    ema: float = 0.0  # decay of an exponential moving average of the weights; 0 = off
    clean_last: int = 0  # the last N epochs train on the images as they are, unaugmented
    augment: Augment = field(default_factory=Augment)

    def __post_init__(self) -> None:
        if self.clean_last < 0:
            raise ValueError(f"clean_last must be >= 0, got {self.clean_last}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        """Fields added since `d` was stored take their defaults."""
        d = dict(d)
        aug = d.pop("augment", {}) or {}
        aug["scale"] = tuple(aug.get("scale", (1.0, 1.0)))
        return cls(**d, augment=Augment(**aug))

    def matches(self, stored: dict) -> bool:
        """Whether a recipe read back from the store is this one. Compared as recipes, not as
        JSON, so that runs stored before a field was added still match."""
        try:
            return Recipe.from_dict(stored) == self
        except (TypeError, ValueError):  # a field this version no longer has
            return False


@dataclass(frozen=True)
class SeedResults:
    """The seed document's own numbers for a step, read from its notebook logs."""

    params: int
    test_curve: tuple[float, ...]
    best_train: float | None = None


@dataclass(frozen=True)
class Variant:
    """Something tried on the way to a step and compared on the validation protocol: the step
    with another model and/or recipe. Runs as `STEP.NAME` (e.g. `step7.no-ema`)."""

    name: str
    change: str  # what differs from the step, in a few words
    build: Callable[[], nn.Module] | None = None  # None: the step's model
    recipe: Recipe | None = None  # None: the step's recipe


@dataclass(frozen=True)
class Step:
    """One rung of a ladder: what it aims at, the network, how it is trained, what it showed.

    The built-in steps live in this package; a step of your own is the same object, defined in
    a Python file of yours as `STEP = Step(...)` (see `ladder new`) or in a notebook cell.
    """

    name: str
    title: str  # what this step changes, in a few words
    build: Callable[[], nn.Module]  # a fresh, untrained network returning logits [N, 10]
    recipe: Recipe
    target: tuple[str, ...] = ()
    analysis: tuple[str, ...] = ()
    params: int | None = None  # pinned: checked against the built model; None: counted here
    seed: SeedResults | None = None
    mean_final_goal: float | None = None  # a target on the seeds' mean final test accuracy
    tried: tuple[Variant, ...] = ()  # alternatives compared on validation, shown in the report
    builds_on: str | None = None  # the step it changes, when not the one before it
    parent: str | None = None  # set on a variant: the step it varies
    # A step defined outside the package: its source text (the file, or what `inspect` recovers
    # from a notebook cell) and the file it came from. Its hash is part of a run's identity.
    source: str | None = None
    source_file: str | None = None

    def __post_init__(self) -> None:
        if self.params is None:
            from .models import count_parameters

            object.__setattr__(self, "params", count_parameters(self.build()))

    @property
    def source_hash(self) -> str | None:
        return None if self.source is None else hashlib.sha256(self.source.encode()).hexdigest()[:16]

    def variant(self, name: str) -> Step:
        v = next((v for v in self.tried if v.name == name), None)
        if v is None:
            raise KeyError(name)
        return dataclasses.replace(
            self,
            name=f"{self.name}.{v.name}",
            title=v.change,
            build=v.build or self.build,
            recipe=v.recipe or self.recipe,
            analysis=(),
            params=None,
            seed=None,
            mean_final_goal=None,
            tried=(),
            builds_on=None,
            parent=self.name,
        )
