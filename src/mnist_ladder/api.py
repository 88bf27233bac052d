"""The Python API, for notebooks and scripts: the same engine as the `ladder` command.

import mnist_ladder as ml
mine = ml.Step("wider", "step6, wider", build=my_build, recipe=ml.step("step6").recipe)
result = ml.fit(mine, seed=1, epochs=2)
result.history[-1]["test_acc"], result.plot()
print(ml.compare("step6", mine))
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import steps
from .core.goal import TARGET
from .engine.pack import check_group, unpackable
from .runs.catalog import StepFileError, catalog, inline_source
from .runs.experiment import WEIGHTS, RunError, RunOptions, load_model, make_spec, resume_target, run
from .runs.results import headline_key, main_set, run_sets
from .runs.store import Store, Stores, default_db_path, reference_db_path
from .steps import Step
from .views import comparison as _compare


class _StepsModule(types.ModuleType):
    """`mnist_ladder.steps` is the registry every layer imports, and also `ml.steps()`, the
    API's list of steps: a module can be called once its class says how (the documented
    `module.__class__` hook). Set here, at the top, since listing the user's steps needs the
    catalog, a layer above the registry."""

    def __call__(self, steps_dir: str | None = None) -> dict[str, Step]:
        """Every step by name: the built-in ladder, then yours (`./steps`, or `steps_dir`)."""
        return catalog(steps_dir).steps


steps.__class__ = _StepsModule


def step(name_or_path: str | Path, steps_dir: Path | str | None = None) -> Step:
    """A step by name (`step6`), variant (`step7.no-ema`) or step file path."""
    return catalog(steps_dir).get(str(name_or_path))


def _as_step(s: Step | str | Path) -> Step:
    if not isinstance(s, Step):
        return step(s)
    builtin = steps.STEPS.get(s.name.partition(".")[0])
    if builtin is not None and (
        s is builtin
        or (s.parent == builtin.name and s.source is None and s == builtin.variant(s.name.partition(".")[2]))
    ):
        return s
    if builtin is not None:
        raise StepFileError(f"step name {s.name!r} is a built-in step; give yours another name")
    if s.source is None:  # defined in a cell or a script: what inspect can recover is kept
        s = dataclasses.replace(s, source=inline_source(s))
    return s


@dataclass
class FitResult:
    """A finished run: the trained model, its per-epoch history, and where it is stored."""

    step: Step
    run_id: str
    protocol: str  # test | val | val-only (with any data subset): which accuracy is the headline
    history: list[dict]  # one dict per epoch: lr, train/test (and val) loss and accuracy
    model: nn.Module | None  # None for a seed that diverged
    db: Path

    @property
    def final(self) -> float:
        return self.history[-1][headline_key(self.protocol)]

    def plot(self):
        """The 2x2 curves (loss and accuracy, train and held-out); returns the figure."""
        import matplotlib.pyplot as plt

        held = headline_key(self.protocol).removesuffix("_acc")
        fig, axes = plt.subplots(2, 2, figsize=(10, 7))
        x = [h["epoch"] for h in self.history]
        for ax, (key, title) in zip(
            axes.flat,
            [
                ("train_loss", "Train loss"),
                (f"{held}_loss", f"{held.title()} loss"),
                ("train_acc", "Train accuracy (%)"),
                (f"{held}_acc", f"{held.title()} accuracy (%)"),
            ],
            strict=True,
        ):
            ax.plot(x, [h[key] for h in self.history], marker="o")
            if key.endswith("_acc") and key != "train_acc":
                ax.axhline(TARGET, color="r", lw=0.8, ls=":")
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        fig.suptitle(f"{self.step.name}: {self.run_id}")
        fig.tight_layout()
        return fig


def fit(
    step: Step | str | Path,
    seed: int = 1,
    epochs: int | None = None,
    *,
    seeds: list[int] | None = None,
    device: str = "auto",
    precision: str = "auto",
    val: bool = False,
    val_only: bool = False,
    batch_size: int | None = None,
    train_limit: int | None = None,
    eval_limit: int | None = None,
    db: Path | str | None = None,
    out: Path | str = "runs",
    resume: str | None = None,
    layout: str = "auto",
    verbose: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> FitResult | list[FitResult]:
    """Train a step (a `Step`, a name or a step file) and record it in your store (default
    runs/ladder.db). `seeds=[1, 2, 3]` trains those seeds together in one process, packed
    into one network, and returns one result a seed. `train_limit`/`eval_limit` train and
    evaluate on the first N images, for quick looks; `resume` continues an interrupted run
    (with its group) of this same step; `on_epoch` is called with each epoch's numbers as a
    dict (a live curve in a notebook)."""
    s = _as_step(step)
    options = RunOptions.pick(device, precision, layout=layout, out_dir=str(out))
    db = Path(db) if db else default_db_path()
    with Store(db) as store:
        prior = None
        if resume:
            prior, specs = resume_target(store, resume)
            if specs[0].step != s.name:
                raise RunError(f"run {prior[0].id} is a run of {specs[0].step}, not of {s.name}")
        else:
            specs = [
                make_spec(
                    s,
                    one,
                    epochs=epochs,
                    batch_size=batch_size,
                    val=val or val_only,
                    train_limit=train_limit,
                    eval_limit=eval_limit,
                    test=not val_only,
                )
                for one in (seeds if seeds is not None else [seed])
            ]
        if len(specs) > 1:
            check_group(s.build(), len(specs), specs[0].recipe.batch_size, torch.device(options.device))
            if (why := unpackable(s.build())) is not None:
                if verbose:
                    print(f"seeds {[x.seed for x in specs]} run one after another: {why}")
                groups = [[x] for x in specs]
            else:
                groups = [specs]
        else:
            groups = [specs]
        rows = []
        for group in groups:
            rows += run(
                group,
                store,
                options,
                resume=prior,
                step=s,
                log=print if verbose else (lambda _: None),
                on_result=on_epoch and (lambda r: on_epoch(dataclasses.asdict(r))),
            )
        results = []
        for row in rows:
            history = [{k: v for k, v in e.items() if k != "run_id"} for e in store.epochs(row.id)]
            model = load_model(Path(row.run_dir) / WEIGHTS, s)[0] if row.status == "finished" else None
            results.append(FitResult(s, row.id, row.protocol, history, model, db))
    return results if seeds is not None or len(results) > 1 else results[0]


def compare(
    a: Step | str | Path,
    b: Step | str | Path,
    *,
    db: Path | str | None = None,
    steps_dir: Path | str | None = None,
) -> _compare.Comparison:
    """What B bought over A, over seeds: from your store and the reference results together.
    `print()` it for the table; its fields hold the numbers."""
    ladder = catalog(steps_dir)
    with Stores([Path(db) if db else default_db_path(), reference_db_path()]) as stores:
        sides = []
        for x in (a, b):
            s = _as_step(x) if isinstance(x, Step) else ladder.get(str(x))
            found = main_set(run_sets(stores, s))
            if found is None:
                raise _compare.CompareError(
                    f"{s.name} has no finished runs in your store or the reference results; fit it first"
                )
            sides.append(found.side(stores=stores))
        return _compare.compare(*sides)
