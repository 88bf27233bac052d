"""REPORT.md and its figures, regenerated from the results store alone.

Every number in the report is computed here from stored epochs; the text around them comes
from the step definitions (Target, Analysis) and from rules applied to those numbers.
"""

from __future__ import annotations

import math
import re
import shutil
import sqlite3
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from .. import steps
from ..core.errors import LadderError
from ..core.files import check_output, safe_name, save_figure, write_atomic
from ..core.goal import BUDGET, LAST, TARGET
from ..runs.catalog import Catalog
from ..runs.corrupted import CORRUPTIONS, mean_accuracy
from ..runs.experiment import STORE_WEIGHTS_MAX_BYTES, load_model, weights_file
from ..runs.results import first_test_run, pareto_front, run_sets
from ..runs.store import RunRow, StoreError, Stores
from . import comparison, insight
from .summary import summary_table


class ReportError(LadderError, RuntimeError):
    """The report cannot be built (no store to read): the old report is left as it was."""


@dataclass
class SeedRun:
    row: RunRow
    epochs: list[dict]
    corrupted: dict[str, float] | None = None  # accuracy under each corruption; None: not measured

    @property
    def robustness(self) -> float | None:
        return mean_accuracy(self.corrupted)

    def series(self, key: str) -> list[float]:
        return [e[key] for e in self.epochs]

    @property
    def select_key(self) -> str:
        return "val_acc" if self.row.protocol == "val" else "test_acc"

    @property
    def best_test(self) -> float:
        """Seed protocol: the best test epoch. Validation protocol: test at the best val epoch."""
        best = max(self.epochs, key=lambda e: e[self.select_key])
        return best["test_acc"]

    @property
    def final_test(self) -> float:
        return self.epochs[-1]["test_acc"]

    @property
    def best_train(self) -> float:
        return max(self.series("train_acc"))

    @property
    def first_at_target(self) -> int | None:
        return next((e["epoch"] for e in self.epochs if e["test_acc"] >= TARGET), None)

    @property
    def last_held(self) -> int:
        return sum(e["test_acc"] >= TARGET for e in self.epochs[-LAST:])


@dataclass
class StepResults:
    step: steps.Step
    protocol: str
    runs: list[SeedRun] = field(default_factory=list)
    epochs: int = 15

    @property
    def label(self) -> str:
        """The protocol, and the epoch count when it is not the step's own (a quick run)."""
        short = self.epochs != self.step.recipe.epochs
        return f"{self.protocol}-{self.epochs}ep" if short else self.protocol

    def side(self) -> comparison.Side:
        return comparison.Side(
            self.step.name,
            self.step.params,
            self.step.recipe,
            self.protocol,
            {r.row.seed: r.epochs for r in self.runs},
            robustness={r.row.seed: r.robustness for r in self.runs if r.robustness is not None} or None,
        )

    def stat(self, attr: str) -> tuple[float, float, float]:
        vals = [getattr(r, attr) for r in self.runs]
        return statistics.fmean(vals), statistics.pstdev(vals), min(vals)

    @property
    def seeds_holding(self) -> int:
        return sum(r.last_held == LAST for r in self.runs)


def fmt(mean: float, std: float, n: int) -> str:
    return f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f}"


# ---------------------------------------------------------------- gathering


def gather(stores, ladder: Catalog, skipped: list[str]) -> dict[tuple[str, str], StepResults]:
    """Per (step, protocol and length): the latest finished run of each seed with the step's
    own model and recipe (see results.run_sets)."""
    out: dict[tuple[str, str], StepResults] = {}
    known = set(ladder.steps)
    for row in stores.runs():
        if row.step.partition(".")[0] not in known:
            why = (
                "a searched architecture (see `ladder sweep report`)"
                if row.step.startswith("trial-")
                else f"step {row.step!r} is not defined in this version"
            )
            skipped.append(f"{row.id}: {why}")
    for step in ladder:
        for s in run_sets(stores, step, skipped):
            if s.protocol == "val-only":
                continue  # design runs: see gather_tried
            if ":" in s.protocol:  # runs on data subsets are checks, not results
                skipped += [
                    f"{row.id}: trained on a data subset ({s.protocol})" for row, _ in s.runs.values()
                ]
                continue
            res = StepResults(
                step, s.protocol, [SeedRun(row, e) for _, (row, e) in sorted(s.runs.items())], s.epochs
            )
            out[(step.name, res.label)] = res
    return out


@dataclass
class Tried:
    """A step or one of its variants, as run on the validation protocol without the test set."""

    step: steps.Step
    change: str
    curves: list[list[float]] = field(default_factory=list)  # validation accuracy per seed

    @property
    def final(self) -> float:
        return statistics.fmean(c[-1] for c in self.curves)

    def row(self, reference: float | None) -> str:
        n = len(self.curves)
        change = self.change.replace("|", "\\|")  # a table cell: a bare | would split it
        if n == 0:
            return (
                f"| `{self.step.name}` | {change} | {self.step.params:,} | 0 | "
                "not in this store | - | - | - |"
            )
        finals = [c[-1] for c in self.curves]
        last = [statistics.fmean(c[-LAST:]) for c in self.curves]
        holding = sum(all(v >= TARGET for v in c[-LAST:]) for c in self.curves)
        delta = "-" if reference is None or self.step.parent is None else f"{self.final - reference:+.2f}"
        return (
            f"| `{self.step.name}` | {change} | {self.step.params:,} | {n} | "
            f"{fmt(self.final, statistics.pstdev(finals), n)} "
            f"({min(finals):.2f}) | {delta} | {statistics.fmean(last):.2f} | {holding}/{n} |"
        )


def gather_tried(store, ladder: Catalog, skipped: list[str]) -> dict[str, list[Tried]]:
    """Per ladder step: its own design runs and its variants' (protocol val-only), seed by seed."""
    out: dict[str, dict[str, Tried]] = {}
    latest: dict[tuple[str, int], RunRow] = {}
    for row in store.runs():
        if row.protocol != "val-only":
            continue
        try:
            step = ladder.get(row.step)
        except steps.UnknownStep:
            skipped.append(f"{row.id}: design run of {row.step!r}, not defined in this version")
            continue
        if row.effective_status != "finished":
            skipped.append(f"{row.id}: {row.effective_status}, not finished")
        elif not step.recipe.matches(row.recipe) or row.params != step.params:
            skipped.append(f"{row.id}: model or recipe differs from {row.step}'s current definition")
        else:
            latest[(row.step, row.seed)] = row
    for (name, _seed), row in sorted(latest.items(), key=lambda kv: kv[0]):
        epochs = store.epochs(row.id)
        if len(epochs) != row.recipe["epochs"]:
            skipped.append(f"{row.id}: {len(epochs)} of {row.recipe['epochs']} epochs stored")
            continue
        step = ladder.get(name)
        parent = step.parent or step.name
        change = step.title if step.parent else "**the step as defined**"
        tried = out.setdefault(parent, {}).setdefault(name, Tried(step, change))
        tried.curves.append([e["val_acc"] for e in epochs])
    for parent, step in ladder.steps.items():  # what each step says it tried, run here or not
        for v in step.tried:
            name = f"{parent}.{v.name}"
            out.setdefault(parent, {}).setdefault(name, Tried(ladder.get(name), v.change))
    return {
        parent: sorted(t.values(), key=lambda t: (t.step.parent is not None, not t.curves, t.step.name))
        for parent, t in out.items()
    }


def tried_section(tried: list[Tried]) -> list[str]:
    own = [t for t in tried if t.step.parent is None and t.curves]
    reference = own[0].final if own else None
    absent = [t for t in tried if not t.curves]
    return [
        "",
        "### What was tried",
        "",
        "Design runs on the validation protocol (train on the first 50,000, validate on the "
        "last 10,000; the test set never evaluated), 15 epochs, "
        "`ladder run STEP.VARIANT --val-only --seed N`:",
        "",
        "| run as | change | parameters | seeds | final val (min) | vs the step "
        f"| mean of last 3 | seeds ≥ {TARGET} in each of the last {LAST} |",
        "|---|---|---|---|---|---|---|---|",
        *(t.row(reference) for t in tried),
        "",
        *(
            [
                f"{len(absent)} of these have no runs in this store: the analysis above may "
                "describe them from an earlier store; the command above measures them again.",
                "",
            ]
            if absent
            else []
        ),
    ]


# ---------------------------------------------------------------- figures


DPI = insight.DPI  # 120: reads on a laptop screen; one resolution for every figure


def plot_curves(res: StepResults, path: Path) -> None:
    """Loss and accuracy, train and test, and the learning rate, per epoch: mean and band over
    seeds, the 99.4% line on the test accuracy, and where a clean finish starts."""
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    panels = [
        ("train_loss", "Train loss"),
        ("test_loss", "Test loss"),
        ("lr", "Learning rate"),
        ("train_acc", "Train accuracy (%)"),
        ("test_acc", "Test accuracy (%)"),
    ]
    clean = res.step.recipe.clean_last
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        curves = torch.tensor([r.series(key) for r in res.runs], dtype=torch.float64)
        x = range(1, curves.shape[1] + 1)
        ax.plot(x, curves.mean(0).tolist(), label=f"mean of {len(res.runs)} seed(s)")
        if len(res.runs) > 1 and key != "lr":
            ax.fill_between(
                x,
                curves.min(0).values.tolist(),
                curves.max(0).values.tolist(),
                alpha=0.25,
                label="min-max over seeds",
            )
        if key == "test_acc":
            if res.step.seed:
                ax.plot(x, res.step.seed.test_curve[: len(x)], "k--", lw=1, label="seed document")
            ax.axhline(TARGET, color="r", lw=0.8, ls=":", label=f"{TARGET}%")
        if clean and len(x) > clean:
            ax.axvline(
                len(x) - clean + 0.5, color="gray", lw=0.8, ls="--", label=f"clean finish (last {clean})"
            )
        ax.set_title(title + (" (at each epoch's start)" if key == "lr" else ""))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes.flat[-1].axis("off")
    fig.suptitle(f"{res.step.name}: {res.step.title} ({res.protocol} protocol)")
    fig.tight_layout()
    save_figure(fig, path, DPI)
    plt.close(fig)


def predictions(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    from ..engine.train import normalize, predict, to_unit

    return predict(model, normalize(to_unit(images))).argmax(1)


def plot_misclassified(
    pred: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, title: str, path: Path, n: int = 40
) -> int:
    wrong = (pred != labels).nonzero().flatten()
    cols = 10
    rows = max(1, math.ceil(min(n, len(wrong)) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.3))
    for ax in axes.flat if hasattr(axes, "flat") else [axes]:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong[:n].tolist(), strict=False):
        ax.imshow(images[i].numpy(), cmap="gray_r")
        ax.set_title(f"{pred[i].item()} (true {labels[i].item()})", fontsize=7, color="firebrick")
    fig.suptitle(
        f"{title}: {len(wrong)} of {len(labels)} test images misclassified "
        f"(first {min(n, len(wrong))}: predicted, true)",
        fontsize=9,
    )
    fig.tight_layout()
    save_figure(fig, path, DPI)
    plt.close(fig)
    return len(wrong)


def plot_confusion(pred: torch.Tensor, labels: torch.Tensor, title: str, path: Path) -> None:
    cm = torch.zeros(10, 10, dtype=torch.long)
    cm.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    off = cm.clone().fill_diagonal_(0)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(off.numpy(), cmap="Reds")
    dark = off.max().item() / 2  # counts on dark cells are written in white
    for t in range(10):
        for p in range(10):
            ax.text(
                p,
                t,
                str(cm[t, p].item()),
                ha="center",
                va="center",
                fontsize=7,
                color="gray" if t == p else "white" if off[t, p] > dark else "black",
            )
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: confusion (errors shaded)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, DPI)
    plt.close(fig)


def plot_params_vs_accuracy(results: list[StepResults], path: Path) -> None:
    """Every step: parameters against final test accuracy, mean ± std over seeds, one colour
    each, labels set apart so they do not overlap; on the right, the frontier on a linear
    scale, where the whole ladder's axes crowd it: the steps under the 8,000 budget within
    0.2 points of 99.4, the best of them for their size joined by a line."""
    from matplotlib.ticker import FuncFormatter

    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(13, 5.5), width_ratios=(3, 2))
    colours = plt.get_cmap("tab20").colors
    readable = FuncFormatter(
        lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k" if v >= 1e3 else f"{v:g}"
    )
    frontier = [
        (i, r)
        for i, r in enumerate(results)
        if r.step.params < BUDGET and r.stat("final_test")[0] >= TARGET - 0.2
    ]
    for axes, shown in ((ax, list(enumerate(results))), (zoom, frontier)):
        same_size: dict[int, int] = {}  # steps with one parameter count: labels stacked apart
        for i, res in shown:
            mean, std, _ = res.stat("final_test")
            colour = colours[i % len(colours)]
            axes.errorbar(
                res.step.params,
                mean,
                yerr=std,
                fmt="o",
                capsize=3,
                color=colour,
                label=f"{res.step.name} ({res.step.params:,})",
            )
            k = same_size[res.step.params] = same_size.get(res.step.params, -1) + 1
            axes.annotate(
                res.step.name,
                (res.step.params, mean),
                textcoords="offset points",
                xytext=(8, -4 + 10 * k),
                fontsize=8,
                color=colour,
            )
        axes.axhline(TARGET, color="r", lw=0.8, ls=":")
        axes.grid(alpha=0.3, which="both")
        axes.xaxis.set_major_formatter(readable)
    ax.axvline(BUDGET, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(readable)
    ax.set_xlabel(f"parameters (log scale; dashed: the {BUDGET:,} budget)")
    ax.set_ylabel(f"final test accuracy (%), mean ± std over seeds; dotted: {TARGET}%")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    best = pareto_front([(r.step.params, r.stat("final_test")[0]) for _, r in frontier])
    if best:
        zoom.plot(*zip(*best, strict=True), color="gray", lw=0.8, zorder=0)
    zoom.set_title(f"the frontier: under {BUDGET:,} parameters, within 0.2 of {TARGET}", fontsize=10)
    zoom.set_xlabel("parameters")
    if not frontier:
        zoom.text(0.5, 0.5, "no step near the target yet", ha="center", transform=zoom.transAxes)
    fig.tight_layout()
    save_figure(fig, path, DPI)
    plt.close(fig)


# ---------------------------------------------------------------- text


def observations(res: StepResults, prev: StepResults | None) -> list[str]:
    n = len(res.runs)
    train, _, _ = res.stat("best_train")
    best, _, _ = res.stat("best_test")
    final, final_std, _ = res.stat("final_test")
    gap = train - best
    out = []
    if gap > 0.3:
        out.append(
            f"Over-fitting: best train accuracy {train:.2f} is {gap:.2f} points above "
            f"best test accuracy {best:.2f}."
        )
    elif gap < -0.1:
        out.append(
            f"Under-fitting: best train accuracy {train:.2f} is {-gap:.2f} points below "
            f"best test accuracy {best:.2f}; the training data is harder than the test data "
            "or the regularization strong."
        )
    else:
        out.append(
            f"Train and test accuracy are close ({train:.2f} vs {best:.2f}): no clear over- or under-fitting."
        )
    goal = res.step.mean_final_goal
    if goal is not None:  # this step's target is a mean, not 99.4 held
        out.append(
            f"Target {'met' if final >= goal else 'missed'}: mean final test accuracy "
            f"{final:.2f} over {n} seed(s), for a goal of ≥ {goal}."
        )
    held = "Target met" if goal is None else f"{TARGET} held"
    holding = res.seeds_holding
    if holding == n:
        out.append(f"{held}: test accuracy ≥ {TARGET} in each of the last {LAST} epochs for all {n} seed(s).")
    elif holding:
        out.append(
            f"{held} by {holding} of {n} seeds (≥ {TARGET} in each of the last {LAST} "
            "epochs); not reliably held."
        )
    else:
        touched = sum(r.first_at_target is not None for r in res.runs)
        missed = "Target missed" if goal is None else f"{TARGET} not held"
        out.append(
            f"{missed}: no seed holds {TARGET} over the last {LAST} epochs"
            + (f" ({touched} of {n} touched it at least once)." if touched else ".")
        )
    if n > 1:  # the seeds' mean curve: a target can be "for the mean" as well as per seed
        mean_last = [
            statistics.fmean(vals)
            for vals in zip(*(r.series("test_acc")[-LAST:] for r in res.runs), strict=True)
        ]
        verdict = ("≥" if min(mean_last) >= TARGET else "below") + f" {TARGET}"
        out.append(
            f"Mean of the {n} seeds in each of the last {LAST} epochs: "
            + ", ".join(f"{v:.2f}" for v in mean_last)
            + f" ({verdict} in {'each' if min(mean_last) >= TARGET else 'at least one'})."
        )
    spread = statistics.fmean(
        max(r.series("test_acc")[-LAST:]) - min(r.series("test_acc")[-LAST:]) for r in res.runs
    )
    out.append(
        f"Stability: the last {LAST} epochs' test accuracy moves by {spread:.2f} points "
        f"on average within a seed; the final accuracy varies by ± {final_std:.2f} across "
        "seeds."
    )
    if prev is not None:
        out.append(versus(prev, res))
    return out


def versus(prev: StepResults, res: StepResults) -> str:
    """The step against the one it builds on: the difference over seeds with its 95% interval
    and a plain verdict, at the last epoch both have."""
    c = comparison.compare(prev.side(), res.side())
    a = statistics.fmean(c.a_values.values())
    b = statistics.fmean(c.b_values.values())
    where = (
        "final test accuracy" if c.epoch == res.epochs == prev.epochs else f"test accuracy at epoch {c.epoch}"
    )
    diff = f"{c.interval.diff:+.2f} ± {c.interval.half_width:.2f}" if c.interval else f"{b - a:+.2f}"
    line = (
        f"Versus {prev.step.name}: {res.step.params - prev.step.params:+,} parameters, "
        f"{where} {diff} points ({a:.2f} → {b:.2f}; ± is the 95% interval over seeds): "
        f"{c.verdict}."
    )
    r = c.robustness
    if r is None:
        return line + " Robustness (the corrupted set): not measured on both."
    ra, rb = statistics.fmean(r.a_values.values()), statistics.fmean(r.b_values.values())
    spread = f" ± {r.interval.half_width:.2f}" if r.interval else ""
    return line + (
        f" On the corrupted set it {'bought' if rb >= ra else 'cost'} {rb - ra:+.2f}{spread} points "
        f"({ra:.2f} → {rb:.2f}, mean over its fifteen corruptions): {r.verdict}."
    )


def first_test_line(step: steps.Step, first: RunRow) -> str:
    """When the test set was first looked at for a step beyond the seed, and from what code:
    with the commit anyone can check that the step's file already held its choice."""
    when = f"- First test-protocol run: {first.started[:16].replace('T', ' ')} UTC"
    if not first.git_commit:
        return f"{when}, not from a git checkout"
    state = {0: "a clean checkout", 1: "uncommitted changes"}.get(first.git_dirty, "unknown state")
    path = steps.FILES.get(step.name)
    check = f"; check: `git show {first.git_commit[:12]}:{path}`" if path else ""
    return f"{when}, git {first.git_commit[:12]} ({state}){check}"


SEES = {  # insight.FIGURES, each with what it shows: one line under its heading
    "kernels": "The first convolution's kernels, the filters laid on the raw pixels (red "
    "positive, blue negative weights, on one scale): small stroke and edge detectors.",
    "feature-maps": "The first test digit through every convolution, a row per layer (its first "
    "maps, each on its own scale): strokes at full resolution, then coarser "
    "maps of parts, then the ten class scores.",
    "saliency": "What drove the wrong answers: for the first misclassified test digits, the "
    "pixels whose change moves the wrongly predicted class's score most "
    "(|gradient|, averaged over noisy copies: SmoothGrad).",
    "receptive-field": "The receptive field, layer by layer: the square of the 28x28 input that "
    "one unit at the centre sees (the RF column of the layer table, drawn).",
}


def sees_section(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    pred: torch.Tensor,
    figs: Path,
    rel: str,
    name: str,
    tag: str,
    seed: int,
) -> list[str]:
    """The four figures of what the network sees (insight.py), each with a line saying what."""
    paths = insight.write_figures(model, images, labels, pred, figs, prefix=f"{tag}-")
    lines = [
        "",
        "### What the network sees",
        "",
        f"Seed {seed}'s final model, the one above, seen from inside.",
    ]
    for key in insight.FIGURES:
        lines += ["", SEES[key], "", f"![{name} {key}]({rel}/{paths[key].name})"]
    return lines


def step_section(
    res: StepResults,
    prev: StepResults | None,
    figs: Path,
    rel: str,
    mnist_test: tuple[torch.Tensor, torch.Tensor] | None,
    store: Stores | None,
    skipped: list[str],
    tried: list[Tried] | None = None,
) -> list[str]:
    s, n = res.step, len(res.runs)
    seeds = ", ".join(str(r.row.seed) for r in res.runs)
    lines = [f"## {s.name}: {s.title}", "", "### Target", ""]
    lines += [f"- {t}" for t in s.target]
    best, best_std, best_min = res.stat("best_test")
    final, final_std, final_min = res.stat("final_test")
    train, train_std, _ = res.stat("best_train")
    firsts = [r.first_at_target for r in res.runs]
    first = ", ".join(str(f) if f else "never" for f in firsts)
    held = ", ".join(f"{r.last_held}/{LAST}" for r in res.runs)
    best_label = (
        "Test accuracy at the best validation epoch" if res.protocol == "val" else "Best test accuracy"
    )
    lines += [
        "",
        "### Results",
        "",
        f"Protocol: **{res.protocol}**, {res.epochs} epochs; {n} seed(s) ({seeds}); mean ± std over seeds.",
        "",
        f"- Parameters: {s.params:,}",
        f"- Best training accuracy: {fmt(train, train_std, n)}",
        f"- {best_label}: {fmt(best, best_std, n)} (min {best_min:.2f})",
        f"- Final test accuracy (epoch {res.runs[0].epochs[-1]['epoch']}): "
        f"{fmt(final, final_std, n)} (min {final_min:.2f})",
        f"- First epoch at ≥ {TARGET}, per seed: {first}",
        f"- Of the last {LAST} epochs at ≥ {TARGET}, per seed: {held}",
    ]
    if s.seed:
        lines.append(
            f"- The seed document's run: best test {max(s.seed.test_curve):.2f}, "
            f"final {s.seed.test_curve[-1]:.2f}"
            + (f", best train {s.seed.best_train:.2f}" if s.seed.best_train else "")
        )
    if s.seed is None and store is not None and (first := first_test_run(store, s)):
        lines.append(first_test_line(s, first))
    lines += ["", "### Analysis", ""]
    lines += [f"- {a}" for a in s.analysis]
    lines += [f"- {o}" for o in observations(res, prev)]
    if tried:
        lines += tried_section(tried)
    tag = safe_name(f"{s.name}-{res.label}", "a figure name")  # names read from a store
    plot_curves(res, figs / f"{tag}-curves.png")
    lines += ["", f"![{s.name} curves]({rel}/{tag}-curves.png)"]
    # The first seed whose final weights are at hand (its run folder on this machine, or the
    # store's copy): weights over the store's size limit (Step 0's) exist only where a seed ran.
    run, weights = next(
        ((r, w) for r in res.runs if store is not None and (w := weights_file(r.row, store)) is not None),
        (res.runs[0], None),
    )
    if mnist_test is None:
        skipped.append(
            f"{tag}: misclassified digits, confusion matrix and what the network sees (MNIST not available)"
        )
    elif weights is None:
        skipped.append(
            f"{tag}: misclassified digits, confusion matrix and what the network sees "
            f"(no weights: no seed's run folder holds its model.pt, e.g. "
            f"{run.row.run_dir}, and the store has none)"
        )
        if s.params * 4 > STORE_WEIGHTS_MAX_BYTES:  # kept out of the committed store on purpose
            lines += [
                "",
                f"{s.name}'s final weights ({s.params * 4 / 1e6:.0f} MB) are kept out of "
                "the results store, so its misclassified digits, confusion matrix and "
                f"figures of what it sees need a local run: `ladder run {s.name} --seed "
                f"{run.row.seed}`, then `ladder report`.",
            ]
    else:
        images, labels = mnist_test
        model, _ = load_model(weights, s)
        pred = predictions(model, images)
        title = f"{s.name}, seed {run.row.seed}"
        wrong = plot_misclassified(pred, images, labels, title, figs / f"{tag}-misclassified.png")
        plot_confusion(pred, labels, title, figs / f"{tag}-confusion.png")
        lines += [
            "",
            f"Misclassified test digits of seed {run.row.seed}'s final model "
            f"({wrong} of {len(labels)}), and its confusion matrix:",
            "",
            f"![{s.name} misclassified]({rel}/{tag}-misclassified.png)",
            "",
            f"![{s.name} confusion]({rel}/{tag}-confusion.png)",
        ]
        if insight.convolutions(model):
            lines += sees_section(model, images, labels, pred, figs, rel, s.name, tag, run.row.seed)
        else:  # a step of the user's may be any network
            skipped.append(f"{tag}: what the network sees (it has no convolution)")
    lines += [
        "",
        "<details><summary>Layers and receptive field</summary>",
        "",
        "```",
        summary_table(s.build()),
        "```",
        "",
        "</details>",
        "",
    ]
    return lines


def plot_robustness(results: list[StepResults], path: Path) -> None:
    """Steps by corruptions: each cell the step's mean accuracy under that corruption, its
    colour the difference from the corruption's mean over the steps (a diverging scale)."""
    names = list(CORRUPTIONS)
    grid = np.array(
        [
            [statistics.fmean(r.corrupted[k] for r in res.runs if r.corrupted) for k in names]
            for res in results
        ]
    )
    centred = grid - grid.mean(axis=0, keepdims=True)
    bound = max(1.0, float(np.abs(centred).max()))
    fig, ax = plt.subplots(figsize=(13, 0.45 * len(results) + 2.2))
    image = ax.imshow(centred, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=40, ha="right")
    ax.set_yticks(range(len(results)), [f"{r.step.name} ({r.step.params:,})" for r in results])
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="points above (blue) or below (red) the corruption's mean")
    ax.set_title("Accuracy (%) on the corrupted test set, mean over seeds")
    fig.tight_layout()
    save_figure(fig, path, DPI)
    plt.close(fig)


def overview(results: list[StepResults]) -> list[str]:
    lines = [
        "| step | protocol | parameters | seeds | best test | final test (min) "
        f"| seeds holding ≥ {TARGET} (last {LAST}) | corrupted | seed doc best / final | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        n = len(res.runs)
        best, best_std, _ = res.stat("best_test")
        final, final_std, final_min = res.stat("final_test")
        doc = (
            f"{max(res.step.seed.test_curve):.2f} / {res.step.seed.test_curve[-1]:.2f}"
            if res.step.seed
            else "-"
        )
        wall = statistics.fmean(r.row.wall_seconds or 0 for r in res.runs)
        measured = [r.robustness for r in res.runs if r.robustness is not None]
        robust = (
            f"{fmt(statistics.fmean(measured), statistics.pstdev(measured), len(measured))}"
            + (f" ({len(measured)} of {n})" if len(measured) < n else "")
            if measured
            else "not measured"
        )
        lines.append(
            f"| {res.step.name} | {res.label} | {res.step.params:,} | {n} | "
            f"{fmt(best, best_std, n)} | {fmt(final, final_std, n)} ({final_min:.2f}) | "
            f"{res.seeds_holding}/{n} | {robust} | {doc} | {wall:.0f} s |"
        )
    return lines


def write_report(
    db: Path | list[Path],
    out: Path,
    mnist_test: tuple[torch.Tensor, torch.Tensor] | None,
    ladder: Catalog | None = None,
) -> tuple[Path, list[str]]:
    """Write `out` (REPORT.md) and its figures beside it in `report/`, from one store or
    several read as one; returns what was skipped.

    Built in a temporary folder and swapped in only when complete: a store that cannot be
    read is an error and leaves the old report as it was. Of `report/`, only the figures the
    old report referenced are replaced; other files kept there stay.
    """
    paths = [Path(p) for p in ([db] if isinstance(db, str | Path) else db)]
    ladder = ladder or Catalog({})
    if not any(p.is_file() for p in paths):
        raise ReportError("no results store at " + " or ".join(str(p) for p in paths) + "; nothing written")
    out = check_output(Path(out), make_parent=True)  # a regular file, or one line: nothing moved
    figs = out.parent / "report"
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".report-") as tmp:
        new_figs = Path(tmp) / "report"
        new_figs.mkdir()
        try:
            with Stores(paths) as stores:
                text = _write(stores, paths, new_figs, mnist_test, skipped, ladder)
        except (StoreError, sqlite3.Error) as e:
            raise ReportError(f"{e}; nothing written") from e
        figs.mkdir(parents=True, exist_ok=True)
        old_figures = _figures(out.read_text()) if out.is_file() else set()
        for name in old_figures - {f.name for f in new_figs.iterdir()}:
            (figs / name).unlink(missing_ok=True)
        for f in new_figs.iterdir():
            shutil.move(f, figs / f.name)
        write_atomic(out, text)
    return out, skipped


def _figures(report_text: str) -> set[str]:
    """The figures a report references (report/NAME.png): the ones it wrote."""
    return set(re.findall(r"\]\(report/([^)/]+\.png)\)", report_text))


def _write(
    stores: Stores,
    paths: list[Path],
    figs: Path,
    mnist_test: tuple[torch.Tensor, torch.Tensor] | None,
    skipped: list[str],
    ladder: Catalog,
) -> str:
    grouped = gather(stores, ladder, skipped)
    for res in grouped.values():
        for run in res.runs:
            run.corrupted = stores.robustness(run.row.id)
    tried = gather_tried(stores, ladder, skipped)
    runs_total = len(stores.runs())
    order = {name: i for i, name in enumerate(ladder.steps)}
    results = sorted(grouped.values(), key=lambda r: (order[r.step.name], r.label))
    names = " and ".join(f"`{p.name}`" if len(paths) == 1 else f"`{p}`" for p in paths if p.is_file())
    lines = [
        "# MNIST ladder: report",
        "",
        f"Regenerated by `ladder report` from the results store{'s' if len(paths) > 1 else ''} "
        f"{names} ({runs_total} runs). Every number below is computed from stored epochs.",
        "Protocols: **test** is the seed's (train on 60,000, test after every epoch); "
        "**val** trains on 50,000 and picks the best epoch on the last 10,000 training "
        "images, reporting test accuracy at that epoch.",
        "",
    ]
    if results:
        lines += [*overview(results), "", "![parameters vs accuracy](report/params-vs-accuracy.png)", ""]
        plot_params_vs_accuracy(
            [r for r in results if r.protocol == "test"] or results, figs / "params-vs-accuracy.png"
        )
        measured = [r for r in results if r.protocol == "test" and any(x.corrupted for x in r.runs)]
        if measured:
            plot_robustness(measured, figs / "robustness.png")
            lines += [
                "Robustness: accuracy on the corrupted test set (fifteen corruptions in the spirit of "
                "MNIST-C, `docs/robustness.md`), mean over each step's measured seeds; the colour is "
                "the difference from that corruption's mean over the steps shown.",
                "",
                "![robustness by step and corruption](report/robustness.png)",
                "",
            ]
    else:
        lines += ["No finished runs yet: `ladder ladder --seeds 3` runs the whole ladder.", ""]
    prev_by_protocol: dict[str, StepResults] = {}
    done: dict[tuple[str, str], StepResults] = {}
    for res in results:
        base = res.step.builds_on  # compared with the step it changes, not merely the one before
        prev = (
            done.get((base, res.protocol)) or grouped.get((base, res.protocol))
            if base
            else prev_by_protocol.get(res.label)
        )
        lines += step_section(
            res,
            prev,
            figs,
            "report",
            mnist_test,
            stores,
            skipped,
            tried.pop(res.step.name, None) if res.protocol == "test" else None,
        )
        prev_by_protocol[res.label] = done[res.step.name, res.label] = res
    missing = [s for s in ladder.steps if s not in {r.step.name for r in results}]
    if missing:
        lines += ["## Steps without results", "", ", ".join(missing), ""]
    for parent, t in tried.items():  # design runs of a step with no final runs yet
        if any(x.curves for x in t):
            lines += [f"## {parent}: design runs only", *tried_section(t)]
    if skipped:
        lines += ["## Skipped", ""] + [f"- {s}" for s in skipped] + [""]
    return "\n".join(lines)
