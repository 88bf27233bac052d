"""Which stored runs are a step's results, and which accuracy is the headline.

A step's results are its finished runs, the latest per seed, made with the step's own model
and recipe (the epoch count aside: a user's 2-epoch runs are results too, grouped apart from
15-epoch ones) and, for a step of the user's, from the same source. The headline of a run is
its final test accuracy (validation accuracy for design runs that never saw the test set).
Everything that reports, compares or picks "the best" goes through here.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from ..core.goal import BUDGET, LAST, MIN_SEEDS, TARGET
from ..core.goal import held as holds_target
from ..engine.identity import fingerprint
from ..engine.step import Recipe, Step
from .store import RunRow


def headline_key(protocol: str) -> str:
    return "val_acc" if protocol.startswith("val-only") else "test_acc"


@dataclass(frozen=True)
class Side:
    label: str  # what the user typed: a step, variant, user step file, or run id
    params: int
    recipe: Recipe
    protocol: str  # test | val | val-only, with ":train=...,eval=..." for a data subset
    runs: Mapping[int, Sequence[Mapping]]  # seed -> that run's per-epoch rows, oldest first
    model: nn.Module | None = None  # a freshly built model, for the per-layer diff
    robustness: Mapping[int, float] | None = None  # seed -> mean corrupted-set accuracy


def with_robustness(side: Side, run_ids: Mapping[int, str], stores) -> Side:
    """`side` with each seed's mean accuracy on the corrupted set, where it was measured."""
    from .corrupted import mean_accuracy

    found = {seed: mean_accuracy(stores.robustness(i)) for seed, i in run_ids.items()}
    measured = {seed: v for seed, v in found.items() if v is not None}
    return dataclasses.replace(side, robustness=measured or None)


@dataclass
class RunSet:
    """One step's finished runs of one protocol and length: the latest run of each seed."""

    step: Step
    protocol: str
    epochs: int
    runs: dict[int, tuple[RunRow, list[dict]]] = field(default_factory=dict)

    @property
    def finals(self) -> list[float]:
        key = headline_key(self.protocol)
        return [e[-1][key] for _, e in self.runs.values()]

    @property
    def mean_final(self) -> float:
        return statistics.fmean(self.finals)

    def side(self, label: str | None = None, stores=None) -> Side:
        """The runs as a comparison's side; with `stores`, their robustness too."""
        side = Side(
            label or self.step.name,
            self.step.params,
            self.recipe,
            self.protocol,
            {seed: e for seed, (_, e) in sorted(self.runs.items())},
            self.step.build(),
        )
        if stores is None:
            return side
        return with_robustness(side, {seed: row.id for seed, (row, _) in self.runs.items()}, stores)

    @property
    def recipe(self):
        return dataclasses.replace(self.step.recipe, epochs=self.epochs)


def is_result_of(row: RunRow, step: Step) -> bool:
    """Whether a stored run is a run of `step` as it is defined now."""
    recipe = dataclasses.replace(step.recipe, epochs=row.recipe.get("epochs", step.recipe.epochs))
    return (
        row.step == step.name
        and row.effective_status == "finished"
        and row.params == step.params
        and same_source(row, step)
        and recipe.matches(row.recipe)
    )


def same_source(row: RunRow, step: Step) -> bool:
    """Whether a run was made from the step's source as it is now, its prose aside: a user's
    step file whose analysis was edited keeps its results."""
    if row.source_hash == step.source_hash:
        return True
    return (
        row.source is not None
        and step.source is not None
        and fingerprint(row.source) == fingerprint(step.source)
    )


def run_sets(stores, step: Step, skipped: list[str] | None = None) -> list[RunSet]:
    """`step`'s results in `stores` (a Store or Stores), grouped by protocol and epochs."""
    groups: dict[tuple[str, int], RunSet] = {}
    for row in stores.runs(step.name):  # oldest first: a later run of a seed replaces it
        if not is_result_of(row, step):
            if skipped is not None and row.protocol != "val-only":
                skipped.append(f"{row.id}: {why_not(row, step)}")
            continue
        epochs = stores.epochs(row.id)
        if len(epochs) != row.recipe["epochs"]:
            if skipped is not None:
                skipped.append(f"{row.id}: {len(epochs)} of {row.recipe['epochs']} epochs stored")
            continue
        key = (row.protocol, row.recipe["epochs"])
        groups.setdefault(key, RunSet(step, *key)).runs[row.seed] = (row, epochs)
    return sorted(groups.values(), key=lambda s: (s.protocol, -s.epochs))


def why_not(row: RunRow, step: Step) -> str:
    status = row.effective_status
    if status != "finished":
        return f"{status}, not finished"
    if row.params != step.params:
        return f"{row.params:,} parameters; {step.name} now has {step.params:,} (an earlier definition)"
    if not same_source(row, step):
        return f"made from another version of {step.source_file or step.name}'s source"
    return f"recipe differs from {step.name}'s"


def main_set(sets: list[RunSet], protocol: str | None = None) -> RunSet | None:
    """The set that speaks for a step: the most seeds; then the test protocol; then the
    longest runs."""
    sets = [s for s in sets if protocol is None or s.protocol == protocol]
    return max(sets, key=lambda s: (len(s.runs), s.protocol == "test", s.epochs), default=None)


def reference_set(stores, step: Step, run: RunRow) -> RunSet | None:
    """The runs a new run is judged against: `step`'s main set of the run's protocol (its data
    subset aside), without the run itself."""
    sets = run_sets(stores, step)
    for s in sets:
        s.runs = {seed: r for seed, r in s.runs.items() if r[0].id != run.id}
    return main_set([s for s in sets if s.runs], run.protocol.split(":")[0])


def first_test_run(stores, step: Step) -> RunRow | None:
    """The step's first test-protocol run in the stores, whatever became of it: when the test
    set was first looked at for this step, and from which commit (the frontier's protocol)."""
    rows = [r for r in stores.runs(step.name) if r.protocol == "test"]
    return min(rows, key=lambda r: (r.started, r.id)) if rows else None


def best_run(stores, steps: list[Step]) -> tuple[RunRow, str] | None:
    """`best`: of the steps under the 8,000 budget with at least 3 seeds of full-length
    test-protocol runs, the one with the highest mean final test accuracy; of its runs, the
    one with the highest final test accuracy. Returns the run and a sentence saying why."""
    candidates = []
    for step in steps:
        if step.params >= BUDGET or step.parent:
            continue
        s = main_set([x for x in run_sets(stores, step) if x.epochs == step.recipe.epochs], "test")
        if s is not None and len(s.runs) >= MIN_SEEDS:
            candidates.append(s)
    if not candidates:
        return None
    top = max(candidates, key=lambda s: s.mean_final)
    row, epochs = max(top.runs.values(), key=lambda r: r[1][-1]["test_acc"])
    why = (
        f"best: {top.step.name} ({top.step.params:,} parameters) has the highest mean final "
        f"test accuracy under {BUDGET:,} parameters, {top.mean_final:.2f} over "
        f"{len(top.runs)} seeds; its best run is {row.id} (seed {row.seed}, final "
        f"{epochs[-1]['test_acc']:.2f})"
    )
    return row, why


def held(epochs: list[dict], key: str = "test_acc") -> bool:
    """The goal's rule (TARGET in each of the LAST epochs) on a run's stored epochs."""
    return holds_target([e[key] for e in epochs])


def verdict_line(row: RunRow, epochs: list[dict], reference: RunSet | None) -> str:
    """What a user came to learn from a run: the budget, whether 99.4 held, and how it
    compares with the step's reference results over seeds."""
    key = headline_key(row.protocol)
    final = epochs[-1][key]
    metric = "val" if key == "val_acc" else "test"
    budget = f"{row.params:,} parameters ({'under' if row.params < BUDGET else 'over'} the {BUDGET:,} budget)"
    hold = (
        f"{TARGET} {'held' if held(epochs, key) else 'not held'} in each of the last {LAST} epochs"
        if len(epochs) >= LAST
        else f"{len(epochs)} epoch(s): too few to judge whether {TARGET} holds"
    )
    line = f"verdict: {budget}; final {metric} {final:.2f}; {hold}"
    if reference is None:
        return line + "; no reference results for this step to compare with"
    n = len(reference.runs)
    at = len(epochs)
    ref_at = [e[at - 1][key] for _, e in reference.runs.values() if len(e) >= at]
    if not ref_at:
        return line + "; the reference runs are shorter than this one"
    where = "" if at == reference.epochs else f" at epoch {at} of their {reference.epochs}"
    whose = "" if reference.step.name == row.step else f"{reference.step.name}'s "
    return (
        line + f" — {whose}reference{where}: mean {statistics.fmean(ref_at):.2f}, seeds "
        f"{min(ref_at):.2f}–{max(ref_at):.2f} ({n} seed{'s' if n != 1 else ''})"
    )


def group_verdict(runs: list[tuple[RunRow, list[dict]]], reference: RunSet | None) -> str:
    """The verdict of several seeds of one step (trained together): their mean and spread,
    and how many hold the target, against the step's reference results."""
    row, epochs = runs[0]
    key = headline_key(row.protocol)
    finals = [e[-1][key] for _, e in runs]
    holding = sum(held(e, key) for _, e in runs)
    spread = f" ± {statistics.stdev(finals):.2f}" if len(finals) > 1 else ""
    line = (
        f"verdict over {len(runs)} seeds: {row.params:,} parameters; final "
        f"{'val' if key == 'val_acc' else 'test'} mean {statistics.fmean(finals):.2f}{spread} "
        f"({min(finals):.2f}–{max(finals):.2f}); {TARGET} held in each of the last {LAST} epochs "
        f"by {holding} of {len(runs)}"
    )
    if reference is None:
        return line + "; no reference results for this step to compare with"
    ref = [e[-1][key] for _, e in reference.runs.values() if len(e) == len(epochs)]
    if not ref:
        return line + "; the reference runs are of another length"
    return line + f" — reference: mean {statistics.fmean(ref):.2f} over {len(ref)} seeds"


def pareto_front(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The (parameters, accuracy) points no smaller-or-equal network beats: the best of each
    size, kept only where it is more accurate than every smaller one. Of two networks of one
    size, the more accurate speaks for it; a tie in accuracy goes to the smaller network. The
    report's frontier and the sweep's Pareto front are this one."""
    front: list[tuple[int, float]] = []
    for params, neg_acc in sorted((p, -a) for p, a in points):
        if not front or -neg_acc > front[-1][1]:
            front.append((params, -neg_acc))
    return front
