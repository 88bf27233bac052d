"""`ladder compare`'s core: the interval, the verdicts, like-for-like alignment, the diffs.

Sides here are built from synthetic per-epoch rows where the point is the arithmetic; the
layer diff uses the real step models.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from PIL import Image
from scipy import stats

from mnist_ladder import steps
from mnist_ladder.steps import Recipe
from mnist_ladder.views import comparison as cmp
from mnist_ladder.views.summary import layer_rows

# The hand-computed example (accuracies in %):
#   A = 99.41, 99.41, 99.38              mean 99.40, deviations +.01 +.01 -.02
#       variance (1 + 1 + 4)e-4 / 2 = 3e-4,           / n:  3e-4 / 3   = 1.0e-4
#   B = 99.43, 99.44, 99.45, 99.46, 99.47  mean 99.45, deviations -.02 -.01 0 +.01 +.02
#       variance (4 + 1 + 0 + 1 + 4)e-4 / 4 = 2.5e-4, / n:  2.5e-4 / 5 = 0.5e-4
#   difference B - A = 0.05;  standard error sqrt(1.0e-4 + 0.5e-4) = sqrt(1.5e-4) = 0.012247
#   Welch–Satterthwaite df = (1.5e-4)^2 / ((1.0e-4)^2 / 2 + (0.5e-4)^2 / 4)
#                          = 2.25e-8 / (0.5e-8 + 0.0625e-8) = 4 exactly
#   t(0.975, df 4) = 2.776 (a t table's two-sided 95% column, row 4)
#   half-width = 2.776 * 0.012247 = 0.0340;  interval 0.05 ± 0.034 = [0.0160, 0.0840]
A = [99.41, 99.41, 99.38]
B = [99.43, 99.44, 99.45, 99.46, 99.47]


def test_welch_interval_matches_the_hand_computed_example() -> None:
    iv = cmp.welch_interval(A, B)
    assert iv.diff == pytest.approx(0.05, abs=1e-9)
    assert iv.df == pytest.approx(4.0, abs=1e-6)
    assert iv.half_width == pytest.approx(0.0340, abs=1e-3)
    assert (iv.low, iv.high) == (pytest.approx(0.0160, abs=1e-3), pytest.approx(0.0840, abs=1e-3))
    # and scipy's own Welch test (mean(A) - mean(B)) agrees on the interval
    ref = stats.ttest_ind(B, A, equal_var=False).confidence_interval(0.95)
    assert (iv.low, iv.high) == (pytest.approx(ref.low, abs=1e-9), pytest.approx(ref.high, abs=1e-9))


def test_welch_interval_without_spread_or_without_enough_seeds() -> None:
    flat = cmp.welch_interval([99.4, 99.4, 99.4], [99.5, 99.5, 99.5])
    assert flat.half_width == 0 and flat.df is None
    assert flat.low == flat.high == pytest.approx(0.1)
    one_flat = cmp.welch_interval([99.4, 99.4, 99.4], B)  # df falls back to B's n - 1
    assert one_flat.df == pytest.approx(4.0)
    assert cmp.welch_interval([99.4], B) is None


def test_verdicts_say_gain_loss_noise_or_not_yet() -> None:
    assert cmp.versus_text(A, B) == "+0.05 ± 0.03: a real gain"
    assert cmp.versus_text(B, A) == "-0.05 ± 0.03: a real loss"
    noisy = [99.30, 99.50, 99.40]
    assert cmp.versus_text(noisy, [99.35, 99.55, 99.45]).endswith(": within seed noise")
    assert cmp.versus_text([99.4] * 3, [99.4] * 3) == "+0.00 ± 0.00: within seed noise"  # [0, 0]
    too_few = cmp.versus_text(A[:2], B)  # 99.41 twice: an interval, but no verdict
    assert too_few.startswith("+0.04 ± ") and "cannot be judged yet: fewer than 3 seeds" in too_few
    assert cmp.versus_text([99.4], B).startswith("+0.05: cannot be judged yet")
    assert cmp.verdict(None, 1, 5).startswith("cannot be judged yet")


def rows(curve: list[float], key: str = "test_acc") -> list[dict]:
    other = "val_acc" if key == "test_acc" else "test_acc"
    return [{"epoch": e, key: v, other: None, "train_acc": v - 1.0} for e, v in enumerate(curve, start=1)]


def ramp(final: float, epochs: int) -> list[float]:
    """A curve rising by 0.1 an epoch to `final`."""
    return [round(final - 0.1 * (epochs - e), 2) for e in range(1, epochs + 1)]


def side(
    label: str,
    finals: list[float],
    epochs: int = 15,
    protocol: str = "test",
    recipe: Recipe | None = None,
    key: str = "test_acc",
) -> cmp.Side:
    recipe = recipe or dataclasses.replace(steps.get("step6").recipe, epochs=epochs)
    return cmp.Side(
        label,
        6720,
        recipe,
        protocol,
        {seed: rows(ramp(f, epochs), key) for seed, f in enumerate(finals, start=1)},
    )


def test_same_length_runs_compare_their_finals_and_count_seeds_holding() -> None:
    a, b = side("step5", A), side("step6", B)
    c = cmp.compare(a, b)
    assert c.metric == "test_acc" and c.epoch == 15 and c.notes == ()
    assert c.a_values == dict(enumerate(A, start=1)) and c.b_values == dict(enumerate(B, start=1))
    assert c.interval == cmp.welch_interval(A, B) and c.verdict == "a real gain"
    # the ramps rise 0.1 an epoch: a final below 99.6 was under 99.4 at epoch 13
    assert c.a_holding == () and c.b_holding == ()
    held = side("held", [99.70, 99.70, 99.55])
    held.runs[2][-2]["test_acc"] = 99.39  # seed 2 dips at epoch 14
    assert cmp.compare(held, b).a_holding == (1,)


def test_unequal_epochs_compare_at_the_last_epoch_both_have_and_say_so() -> None:
    reference = side("step6", [99.50, 99.55, 99.60], epochs=15)
    user = side("mine.py", [99.00, 99.05, 99.10], epochs=2, protocol="val")
    c = cmp.compare(user, reference)
    assert c.epoch == 2
    at_2 = {seed: r[1]["test_acc"] for seed, r in reference.runs.items()}  # mid-schedule values
    assert c.b_values == at_2 and c.a_values == {1: 99.00, 2: 99.05, 3: 99.10}
    assert c.interval.diff == pytest.approx(sum(at_2.values()) / 3 - 99.05)
    notes = " ".join(c.notes)
    assert "Epochs differ (mine.py: 2, step6: 15): compared at epoch 2" in notes
    assert "Not like for like: mine.py ran the val protocol" in notes and "step6 ran the test" in notes
    assert c.a_holding is None and "not judged (only 2 epoch(s) compared)" in cmp.format_text(c)


def test_holding_is_judged_on_each_sides_own_curve_up_to_the_compared_epoch() -> None:
    long = side("long", [99.9, 99.9, 99.9], epochs=15)  # 99.5-99.7 at epochs 3-5
    short = side("short", [99.5, 99.5, 99.5], epochs=5)
    c = cmp.compare(long, short)
    assert c.epoch == 5
    assert c.a_holding == () and c.b_holding == ()  # long is 98.7..98.9 at 3-5; short 99.3..99.5
    short_high = side("short", [99.7, 99.7, 99.7], epochs=5)  # 99.5, 99.6, 99.7 at 3-5
    assert cmp.compare(long, short_high).b_holding == (1, 2, 3)


def test_design_runs_compare_on_validation_and_test_only_runs_cannot() -> None:
    blind = side("step7.no-ema", [99.4, 99.5, 99.6], protocol="val-only", key="val_acc")
    val = cmp.Side(
        "step7",
        3624,
        blind.recipe,
        "val",
        {s: [{**r, "test_acc": r["val_acc"] - 0.1} for r in rs] for s, rs in blind.runs.items()},
    )
    c = cmp.compare(val, blind)
    assert c.metric == "val_acc" and c.interval.diff == pytest.approx(0.0)
    assert any("step7.no-ema never evaluated the test set" in n for n in c.notes)
    with pytest.raises(cmp.CompareError, match="share no accuracy"):
        cmp.compare(side("step6", B), blind)
    with pytest.raises(cmp.CompareError, match="no finished runs"):
        cmp.compare(dataclasses.replace(blind, runs={}), blind)


def test_recipe_diff_lists_exactly_the_fields_that_differ() -> None:
    base = steps.get("step6").recipe
    changed = dataclasses.replace(
        base, lr=0.05, ema=0.999, augment=dataclasses.replace(base.augment, rotation=12.0)
    )
    diff = cmp.recipe_diff(base, changed)
    assert [(d.field, d.a, d.b) for d in diff] == [
        ("lr", base.lr, 0.05),
        ("ema", base.ema, 0.999),
        ("augment.rotation", base.augment.rotation, 12.0),
    ]
    assert cmp.recipe_diff(base, base) == ()
    text = cmp.format_text(cmp.compare(side("a", A, recipe=base), side("b", B, recipe=changed)))
    assert "augment.rotation" in text and f"{base.lr} → 0.05" in text


def test_layer_diff_of_step5_and_step6() -> None:
    m5, m6 = steps.get("step5").build(), steps.get("step6").build()
    rows5, rows6 = layer_rows(m5), layer_rows(m6)
    diff = cmp.layer_diff(rows5, rows6)
    # nothing lost or invented: each side's rows, in order, are its model's table
    assert [d.a for d in diff if d.a] == rows5 and [d.b for d in diff if d.b] == rows6
    assert sum((d.b.params if d.b else 0) - (d.a.params if d.a else 0) for d in diff) == 6720 - 6124
    for d in diff:
        if d.change in ("same", "changed"):
            assert d.a.name == d.b.name and d.a.output[1:] == d.b.output[1:]
            assert ((d.a.output, d.a.params) == (d.b.output, d.b.params)) == (d.change == "same")
    changed = {(d.a.name, d.a.output, d.b.output) for d in diff if d.change == "changed"}
    assert ("Conv2d", (16, 6, 6), (18, 6, 6)) in changed  # step6's wider last 3x3 block
    only_a = [(d.a.name, d.a.output) for d in diff if d.change == "only_a"]
    assert ("BatchNorm2d", (8, 12, 12)) in only_a  # step6's 1x1 transition has no BN
    assert [(d.b.name, d.b.output) for d in diff[-4:]] == [  # step6's two-layer head
        ("ReLU", (16, 1, 1)),
        ("BatchNorm2d", (16, 1, 1)),
        ("Dropout", (16, 1, 1)),
        ("Conv2d", (10, 1, 1)),
    ]
    same = cmp.layer_diff(rows6, layer_rows(steps.get("step6").build()))
    assert {d.change for d in same} == {"same"}
    a = dataclasses.replace(side("step5", A), params=6124, model=m5)
    text = cmp.format_text(cmp.compare(a, dataclasses.replace(side("step6", B), model=m6)))
    assert "~ Conv2d 16x6x6 (2,304)" in text and "Conv2d 18x6x6 (2,592)" in text


def test_plot_writes_a_png(tmp_path: Path) -> None:
    c = cmp.compare(side("mine.py", A, epochs=4), side("step6", B))
    path = tmp_path / "compare.png"
    cmp.plot(c, path)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_json_is_serializable_and_round_trips_the_numbers() -> None:
    m5, m6 = steps.get("step5").build(), steps.get("step6").build()
    c = cmp.compare(
        dataclasses.replace(side("step5", A), model=m5), dataclasses.replace(side("step6", B), model=m6)
    )
    back = json.loads(json.dumps(cmp.to_json(c)))
    assert {int(k): v for k, v in back["a"]["seeds"].items()} == c.a_values
    assert {int(k): v for k, v in back["b"]["seeds"].items()} == c.b_values
    iv = back["interval"]
    assert (iv["diff"], iv["half_width"], iv["low"], iv["high"], iv["df"]) == (
        c.interval.diff,
        c.interval.half_width,
        c.interval.low,
        c.interval.high,
        c.interval.df,
    )
    assert back["verdict"] == c.verdict and back["epoch"] == 15 and back["metric"] == "test_acc"
    assert Recipe.from_dict(back["a"]["recipe"]) == c.a.recipe
    assert len(back["layer_diff"]) == len(c.layer_diff)
    assert math.isclose(back["a"]["mean"], sum(A) / 3)
