"""What a change bought, over seeds: two sets of runs side by side, like for like.

A side is whatever the user named (a step, a variant, a user step file, a run id) with its
runs' per-epoch rows; gathering them from a store is the caller's job. The two sides are
compared at the last epoch both have, on test accuracy (validation accuracy when a side never
evaluated the test set), and the difference of their means gets Welch's unpaired t interval
over seeds: seeds are independent draws on each side, not pairs, and the two sides' spreads
need not be equal. A difference is called a real gain or loss only when its interval
excludes 0, and not judged at all with fewer than MIN_SEEDS seeds on a side.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from ..core.errors import LadderError
from ..core.files import save_figure
from ..core.goal import LAST, MIN_SEEDS, TARGET
from ..runs.results import Side
from ..steps import Recipe
from .summary import LayerRow, layer_rows

CONFIDENCE = 0.95

METRIC_NAMES = {"test_acc": "test accuracy", "val_acc": "validation accuracy"}
PROTOCOLS = {
    "test": "trained on all 60,000 training images, scored on the test set",
    "val": "trained on the first 50,000 training images, validated on the last 10,000, "
    "also scored on the test set",
    "val-only": "trained on the first 50,000 training images, validated on the last 10,000, "
    "the test set never evaluated",
}


class CompareError(LadderError, ValueError):
    """Two sides that cannot be compared; the message is one line for the user."""


@dataclass(frozen=True)
class Interval:
    """The difference of two means (b - a) with its confidence interval; ± is half_width."""

    diff: float
    half_width: float
    low: float
    high: float
    df: float | None  # Welch–Satterthwaite; None when both sides have zero variance
    confidence: float = CONFIDENCE


@dataclass(frozen=True)
class FieldDiff:
    field: str  # e.g. "lr", "augment.rotation"
    a: object
    b: object


@dataclass(frozen=True)
class LayerDiff:
    change: str  # same | changed (output shape or parameters) | only_a | only_b
    a: LayerRow | None
    b: LayerRow | None


@dataclass(frozen=True)
class Comparison:
    a: Side
    b: Side
    metric: str  # test_acc | val_acc
    epoch: int  # the last epoch both sides have
    notes: tuple[str, ...]  # where the comparison is not like for like, said plainly
    a_values: Mapping[int, float]  # seed -> the metric at `epoch`
    b_values: Mapping[int, float]
    interval: Interval | None  # None with fewer than 2 seeds on a side
    verdict: str
    a_holding: tuple[int, ...] | None  # seeds >= TARGET in each of the LAST epochs up to `epoch`;
    b_holding: tuple[int, ...] | None  # None when fewer than LAST epochs are compared
    recipe_diff: tuple[FieldDiff, ...]
    layer_diff: tuple[LayerDiff, ...] | None  # None when a side has no model
    robustness: Robustness | None = None  # None when a side's runs were not measured

    def __str__(self) -> str:  # print(ml.compare(...)) in a notebook
        return format_text(self)


@dataclass(frozen=True)
class Robustness:
    """Mean accuracy on the corrupted set (runs/corrupted.py), per seed, B against A."""

    a_values: Mapping[int, float]
    b_values: Mapping[int, float]
    interval: Interval | None
    verdict: str


# ---------------------------------------------------------------- statistics


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval | None:
    """Welch's unpaired t interval for mean(b) - mean(a); None with fewer than 2 values a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    diff = statistics.fmean(b) - statistics.fmean(a)
    ua, ub = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se2 = ua + ub
    if se2 == 0:  # every seed identical on both sides: no spread, no width
        return Interval(diff, 0.0, diff, diff, None, confidence)
    df = se2**2 / (ua**2 / (len(a) - 1) + ub**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(se2)
    return Interval(diff, half, diff - half, diff + half, df, confidence)


def verdict(iv: Interval | None, n_a: int, n_b: int) -> str:
    if min(n_a, n_b) < MIN_SEEDS or iv is None:
        return (
            f"cannot be judged yet: fewer than {MIN_SEEDS} seeds on a side "
            f"({n_a} and {n_b}; run at least {MIN_SEEDS} seeds on each)"
        )
    if iv.low > 0:
        return "a real gain"
    if iv.high < 0:
        return "a real loss"
    return "within seed noise"


def versus_text(a_finals: Sequence[float], b_finals: Sequence[float]) -> str:
    """b against a in one phrase, e.g. "+0.05 ± 0.04: within seed noise"."""
    iv = welch_interval(a_finals, b_finals)
    diff = statistics.fmean(b_finals) - statistics.fmean(a_finals)
    spread = "" if iv is None else f" ± {iv.half_width:.2f}"
    return f"{diff:+.2f}{spread}: {verdict(iv, len(a_finals), len(b_finals))}"


# ---------------------------------------------------------------- comparing


def _protocol_text(protocol: str) -> str:
    base, _, subset = protocol.partition(":")
    text = PROTOCOLS.get(base, base)
    return text + (f", on a data subset ({subset})" if subset else "")


def _has(side: Side, key: str) -> bool:
    return all(row.get(key) is not None for rows in side.runs.values() for row in rows)


def _metric(a: Side, b: Side) -> str:
    for key in ("test_acc", "val_acc"):
        if _has(a, key) and _has(b, key):
            return key
    raise CompareError(
        f"{a.label} ({a.protocol} protocol) and {b.label} ({b.protocol} protocol) "
        "share no accuracy: one has only test accuracy, the other only validation"
    )


def _last_epoch(side: Side) -> int:
    """The last epoch every seed of this side has."""
    return min(rows[-1]["epoch"] for rows in side.runs.values())


def _curve(side: Side, seed: int, metric: str, last: int) -> list[float]:
    """One seed's metric at epochs 1..last."""
    by_epoch = {row["epoch"]: row[metric] for row in side.runs[seed]}
    missing = [e for e in range(1, last + 1) if e not in by_epoch]
    if missing:
        raise CompareError(f"{side.label}: the run of seed {seed} has no epoch {missing[0]}")
    return [by_epoch[e] for e in range(1, last + 1)]


def _values(side: Side, metric: str, epoch: int) -> dict[int, float]:
    return {seed: _curve(side, seed, metric, epoch)[-1] for seed in sorted(side.runs)}


def _holding(side: Side, metric: str, epoch: int) -> tuple[int, ...] | None:
    if epoch < LAST:
        return None
    return tuple(
        seed for seed in sorted(side.runs) if min(_curve(side, seed, metric, epoch)[-LAST:]) >= TARGET
    )


def _flat(d: Mapping, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def recipe_diff(a: Recipe, b: Recipe) -> tuple[FieldDiff, ...]:
    """The recipe fields that differ, nested ones (augment.*) by their dotted name."""
    fa, fb = _flat(a.to_dict()), _flat(b.to_dict())
    return tuple(FieldDiff(k, fa[k], fb[k]) for k in fa if fa[k] != fb[k])


def layer_diff(a: Sequence[LayerRow], b: Sequence[LayerRow]) -> tuple[LayerDiff, ...]:
    """The two per-layer tables aligned as a diff aligns lines, a layer matching one of the same
    type at the same resolution: matched layers are the same or changed (channels or
    parameters); the rest are only in one model."""

    def keys(rows: Sequence[LayerRow]) -> list[tuple]:
        return [(r.name, r.output[1:]) for r in rows]  # output[0] is the channels

    out: list[LayerDiff] = []
    matcher = difflib.SequenceMatcher(None, keys(a), keys(b), autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            out += [
                LayerDiff("same" if (ra.output, ra.params) == (rb.output, rb.params) else "changed", ra, rb)
                for ra, rb in zip(a[i1:i2], b[j1:j2], strict=True)
            ]
        else:  # replace, delete, insert: different layers at this place
            out += [LayerDiff("only_a", ra, None) for ra in a[i1:i2]]
            out += [LayerDiff("only_b", None, rb) for rb in b[j1:j2]]
    return tuple(out)


def compare(a: Side, b: Side) -> Comparison:
    for side in (a, b):
        if not side.runs or not all(side.runs.values()):
            raise CompareError(f"{side.label}: no finished runs with epochs to compare")
    metric = _metric(a, b)
    a_last, b_last = _last_epoch(a), _last_epoch(b)
    epoch = min(a_last, b_last)
    a_values, b_values = _values(a, metric, epoch), _values(b, metric, epoch)
    notes = []
    if a.protocol != b.protocol:
        notes.append(
            f"Not like for like: {a.label} ran the {a.protocol} protocol "
            f"({_protocol_text(a.protocol)}); {b.label} ran the {b.protocol} protocol "
            f"({_protocol_text(b.protocol)})."
        )
    if metric == "val_acc":
        blind = " and ".join(s.label for s in (a, b) if not _has(s, "test_acc"))
        notes.append(f"Compared on validation accuracy: {blind} never evaluated the test set.")
    for side, last in ((a, a_last), (b, b_last)):
        if last < side.recipe.epochs:
            notes.append(f"{side.label}'s runs stop at epoch {last} of its recipe's {side.recipe.epochs}.")
    if a_last != b_last:
        longer, last = (a, a_last) if a_last > b_last else (b, b_last)
        own = statistics.fmean(_values(longer, metric, last).values())
        notes.append(
            f"Epochs differ ({a.label}: {a_last}, {b.label}: {b_last}): compared at "
            f"epoch {epoch}, the last both have, from the per-epoch curves. "
            f"{longer.label} is mid-schedule there; its own final (epoch {last}) "
            f"{METRIC_NAMES[metric]} is {own:.2f} on average."
        )
    iv = welch_interval(list(a_values.values()), list(b_values.values()))
    layers = (
        layer_diff(layer_rows(a.model), layer_rows(b.model))
        if a.model is not None and b.model is not None
        else None
    )
    return Comparison(
        a,
        b,
        metric,
        epoch,
        tuple(notes),
        a_values,
        b_values,
        iv,
        verdict(iv, len(a_values), len(b_values)),
        _holding(a, metric, epoch),
        _holding(b, metric, epoch),
        recipe_diff(a.recipe, b.recipe),
        layers,
        _robustness(a, b),
    )


def _robustness(a: Side, b: Side) -> Robustness | None:
    if not a.robustness or not b.robustness:
        return None
    ra, rb = dict(a.robustness), dict(b.robustness)
    iv = welch_interval(list(ra.values()), list(rb.values()))
    return Robustness(ra, rb, iv, verdict(iv, len(ra), len(rb)))


# ---------------------------------------------------------------- output


def _layer_cell(r: LayerRow | None) -> str:
    return "" if r is None else f"{r.name} {'x'.join(map(str, r.output))} ({r.params:,})"


def format_text(c: Comparison) -> str:
    a, b, what = c.a, c.b, METRIC_NAMES[c.metric]
    lines = [
        f"A: {a.label}: {a.params:,} parameters, {a.protocol} protocol, {len(c.a_values)} seed(s)",
        f"B: {b.label}: {b.params:,} parameters, {b.protocol} protocol, {len(c.b_values)} seed(s)",
        f"Parameters, B - A: {b.params - a.params:+,}",
    ]
    lines += ["", *(f"Note: {n}" for n in c.notes)] if c.notes else []
    where = "the last of both" if c.epoch == _last_epoch(a) == _last_epoch(b) else "the last both have"
    lines += [
        "",
        f"{what.capitalize()} at epoch {c.epoch} ({where}), per seed:",
        f"{'seed':>6} {'A':>8} {'B':>8}",
    ]
    for seed in sorted(set(c.a_values) | set(c.b_values)):
        cells = [f"{v[seed]:>8.2f}" if seed in v else f"{'-':>8}" for v in (c.a_values, c.b_values)]
        lines.append(f"{seed:>6} " + " ".join(cells))
    lines.append(
        f"{'mean':>6} {statistics.fmean(c.a_values.values()):>8.2f} "
        f"{statistics.fmean(c.b_values.values()):>8.2f}"
    )
    iv = c.interval
    if iv is None:
        diff = statistics.fmean(c.b_values.values()) - statistics.fmean(c.a_values.values())
        lines.append(f"Difference, B - A: {diff:+.2f} (no interval): {c.verdict}")
    else:
        df = "no spread on either side" if iv.df is None else f"Welch's t, {iv.df:.1f} df"
        lines.append(
            f"Difference, B - A: {iv.diff:+.2f} ± {iv.half_width:.2f} "
            f"({iv.confidence:.0%} interval {iv.low:+.2f} to {iv.high:+.2f}, {df}): "
            f"{c.verdict}"
        )
    if c.a_holding is None:
        lines.append(
            f"Seeds ≥ {TARGET} in each of the last {LAST} epochs: not judged "
            f"(only {c.epoch} epoch(s) compared)"
        )
    else:
        held = [
            f"{s.label} {len(h)}/{len(v)}" + (f" (seeds {', '.join(map(str, h))})" if h else "")
            for s, h, v in ((a, c.a_holding, c.a_values), (b, c.b_holding, c.b_values))
        ]
        lines.append(
            f"Seeds ≥ {TARGET} in each of the last {LAST} epochs "
            f"({c.epoch - LAST + 1}-{c.epoch}): " + "; ".join(held)
        )
    r = c.robustness
    if r is None:
        lines.append("Robustness (corrupted set): not measured on both sides (`ladder evaluate STEP`)")
    else:
        ma, mb = statistics.fmean(r.a_values.values()), statistics.fmean(r.b_values.values())
        spread = "" if r.interval is None else f" ± {r.interval.half_width:.2f}"
        lines.append(
            f"Robustness, mean accuracy on the corrupted set ({len(r.a_values)} and {len(r.b_values)} "
            f"seeds): A {ma:.2f}, B {mb:.2f}; B - A: {mb - ma:+.2f}{spread}: {r.verdict}"
        )
    lines += ["", "Recipe, A → B:" if c.recipe_diff else "Recipe: the same"]
    width = max((len(d.field) for d in c.recipe_diff), default=0)
    lines += [f"  {d.field:<{width}}  {d.a} → {d.b}" for d in c.recipe_diff]
    lines.append("")
    if c.layer_diff is None:
        lines.append("Layers: not compared (a side has no model to build)")
    elif all(d.change == "same" for d in c.layer_diff):
        lines.append(f"Layers: the same ({len(c.layer_diff)} layers)")
    else:
        marks = {"same": " ", "changed": "~", "only_a": "-", "only_b": "+"}
        lines += ["Layers, A → B (~ changed, - only in A, + only in B):", f"    {'A':<32} B"]
        lines += [
            f"  {marks[d.change]} {_layer_cell(d.a):<32} {_layer_cell(d.b):<32}".rstrip()
            for d in c.layer_diff
        ]
    return "\n".join(lines)


def _side_json(s: Side, values: Mapping[int, float], holding: tuple[int, ...] | None) -> dict:
    return {
        "label": s.label,
        "params": s.params,
        "protocol": s.protocol,
        "recipe": s.recipe.to_dict(),
        "last_epoch": _last_epoch(s),
        "seeds": {str(k): v for k, v in values.items()},
        "mean": statistics.fmean(values.values()),
        "holding": None if holding is None else list(holding),
    }


def _row_json(r: LayerRow | None) -> dict | None:
    return None if r is None else {"name": r.name, "output": list(r.output), "params": r.params}


def to_json(c: Comparison) -> dict:
    iv = c.interval
    return {
        "a": _side_json(c.a, c.a_values, c.a_holding),
        "b": _side_json(c.b, c.b_values, c.b_holding),
        "metric": c.metric,
        "epoch": c.epoch,
        "notes": list(c.notes),
        "interval": None
        if iv is None
        else {
            "diff": iv.diff,
            "half_width": iv.half_width,
            "low": iv.low,
            "high": iv.high,
            "df": iv.df,
            "confidence": iv.confidence,
        },
        "verdict": c.verdict,
        "target": TARGET,
        "last": LAST,
        "robustness": None
        if c.robustness is None
        else {
            "suite": "corrupted",
            "a": dict(c.robustness.a_values),
            "b": dict(c.robustness.b_values),
            "interval": None if c.robustness.interval is None else dataclasses.asdict(c.robustness.interval),
            "verdict": c.robustness.verdict,
        },
        "recipe_diff": [{"field": d.field, "a": d.a, "b": d.b} for d in c.recipe_diff],
        "layer_diff": None
        if c.layer_diff is None
        else [{"change": d.change, "a": _row_json(d.a), "b": _row_json(d.b)} for d in c.layer_diff],
    }


def plot(c: Comparison, path: Path) -> None:
    """Both sides' curves of the compared metric: the mean over seeds and its min-max band."""
    fig = Figure(figsize=(8, 5))  # drawn by Agg outside pyplot: importing the package (the
    FigureCanvasAgg(fig)  # API's compare) must not switch a notebook's backend to Agg
    ax = fig.subplots()
    lows = []
    for side, color in ((c.a, "C0"), (c.b, "C1")):
        last = _last_epoch(side)
        per_epoch = list(zip(*(_curve(side, seed, c.metric, last) for seed in side.runs), strict=True))
        x = range(1, last + 1)
        n = len(side.runs)
        ax.plot(
            x,
            [statistics.fmean(v) for v in per_epoch],
            color=color,
            label=f"{side.label}: mean of {n} seed(s)",
        )
        if n > 1:
            ax.fill_between(
                x,
                [min(v) for v in per_epoch],
                [max(v) for v in per_epoch],
                color=color,
                alpha=0.2,
                label=f"{side.label}: min-max over seeds",
            )
        lows += [min(per_epoch[c.epoch - 1]), min(per_epoch[-1])]
    ax.axhline(TARGET, color="r", lw=0.8, ls=":", label=str(TARGET))
    ax.axvline(c.epoch, color="k", lw=0.8, ls="--", label=f"compared at epoch {c.epoch}")
    ax.set_ylim(min(min(lows) - 0.5, TARGET - 0.5), 100)  # the top, where the steps differ
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{METRIC_NAMES[c.metric]} (%)")
    ax.set_title(f"{c.a.label} vs {c.b.label}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, 80)
