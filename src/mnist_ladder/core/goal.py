"""The ladder's goal, in one place: fewer than 8,000 parameters holding 99.4% test accuracy in
each of the last 3 epochs, and how many seeds a verdict needs. Results, the report, the
comparison and the notebook all read it from here."""

from __future__ import annotations

from collections.abc import Sequence

TARGET = 99.4  # test accuracy, percent
LAST = 3  # "held" means: at or above TARGET in each of the last 3 epochs
BUDGET = 8_000  # parameters: a step is under the budget when it has fewer
MIN_SEEDS = 3  # fewer seeds on a side and a difference is not judged


def held(curve: Sequence[float]) -> bool:
    """Whether an accuracy curve (oldest epoch first) holds TARGET in each of its LAST epochs."""
    return len(curve) >= LAST and all(v >= TARGET for v in curve[-LAST:])


def epochs_held(curve: Sequence[float]) -> int:
    """How many of the curve's last LAST epochs are at or above TARGET."""
    return sum(v >= TARGET for v in curve[-LAST:])


def under_budget(params: int) -> bool:
    return params < BUDGET
