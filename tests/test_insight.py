"""Figures of what a network sees (insight.py): the numbers behind them checked by hand, the
figures written and readable, for small networks and the ladder's own, on the CPU."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

from mnist_ladder import steps
from mnist_ladder.apps import cli
from mnist_ladder.engine.data import STD
from mnist_ladder.engine.models import Net
from mnist_ladder.runs.store import RunRow, Store
from mnist_ladder.views import insight
from mnist_ladder.views.summary import fields, layer_rows, summary_table


def small_net() -> nn.Module:
    return Net(
        nn.Conv2d(1, 4, 3),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, dilation=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Conv2d(8, 10, 1),
    )


def test_receptive_field_of_a_small_network_by_hand() -> None:
    # conv3: 3 (jump 1, 26x26, first unit's centre 1.5); pool2: 3 + 1 = 4 (jump 2, 13, 2.0);
    # conv3 pad 1: 4 + 2*2 = 8 (13, the centre stays: padding 1 offsets the window by 1);
    # conv3 dilation 2: 8 + 2*2*2 = 16 (9, centre 2 + 2*2 = 6); GAP over 9: 16 + 8*2 = 32
    # (jump 18, one unit centred on 6 + 4*2 = 14, the input's centre); 1x1: unchanged
    found = [(f.rf, f.jump, f.size, f.start) for f in fields(list(small_net()))]
    assert found == [
        (3, 1, 26, 1.5),
        (4, 2, 13, 2.0),
        (8, 2, 13, 2.0),
        (16, 2, 9, 6.0),
        (32, 18, 1, 14.0),
        (32, 18, 1, 14.0),
    ]
    drawn = insight.receptive_fields(small_net())  # the 1x1 widens nothing: not drawn
    assert [(label, f.rf) for label, f in drawn] == [
        ("1 Conv2d 3x3", 3),
        ("2 MaxPool2d 2x2", 4),
        ("3 Conv2d 3x3", 8),
        ("4 Conv2d 3x3", 16),
        ("5 AdaptiveAvgPool2d 9x9", 32),
    ]


@pytest.mark.parametrize("name", ["step0", "step6", "step7", "step13"])
def test_the_figure_draws_the_layer_table_s_receptive_field(name: str) -> None:
    model = steps.get(name).build()
    printed = {}  # the RF column of `ladder summary`, by layer number
    for line in summary_table(model).splitlines()[1:-1]:
        index, *_, rf, _jump = line.split()
        printed[int(index)] = int(rf)
    drawn = insight.receptive_fields(model)
    assert drawn and all(printed[int(label.split()[0])] == f.rf for label, f in drawn)
    assert [f.rf for _, f in drawn] == sorted(f.rf for _, f in drawn)  # only ever wider
    for row in layer_rows(model):  # the map sizes the recurrence follows are torch's own
        assert row.field.size == row.output[-1], row
    if name == "step13":
        assert [f.rf for _, f in drawn] == [3, 5, 7, 8, 12, 16, 20, 28]


def test_feature_maps_hook_every_convolution_and_leave_no_hook_behind(mnist) -> None:
    model = steps.get("step13").build().eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    maps, logits = insight.feature_maps(model, mnist.test_images[0])
    assert len(maps) == len(convs) == 10
    shapes = [r.output for r in layer_rows(model) if r.name == "Conv2d"]
    assert [tuple(out.shape) for _, _, out in maps] == shapes
    assert [m for _, m, _ in maps] == convs
    expected = model(((mnist.test_images[:1].float() / 255 - 0.1307) / 0.3081)[:, None])[0]
    assert torch.allclose(logits, expected.detach(), atol=1e-5)
    assert all(not m._forward_hooks for m in model.modules())


def test_saliency_of_a_linear_model_is_its_weights() -> None:
    # logit_c = <w_c, (x - mean) / std> + b: d logit_c / dx = w_c / std, whatever the noise
    torch.manual_seed(0)
    model = Net(nn.Conv2d(1, 10, 28))
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    target = torch.tensor([4, 9, 0])
    maps = insight.saliency(model, images, target, samples=3)
    assert maps.shape == (3, 1, 28, 28)
    expected = model[0].weight[target].detach().abs() / STD
    assert torch.allclose(maps, expected, rtol=1e-4)


def test_saliency_has_the_input_s_shape_is_nonzero_and_repeatable(mnist) -> None:
    model = steps.get("step7").build()
    model.train()
    x, target = mnist.test_images[:4], torch.tensor([1, 2, 3, 4])
    maps = insight.saliency(model, x, target, samples=4)
    assert maps.shape == (4, 1, 28, 28) and torch.isfinite(maps).all()
    assert (maps >= 0).all() and (maps.flatten(1).amax(1) > 0).all()
    assert torch.equal(maps, insight.saliency(model, x, target, samples=4))  # seeded noise
    assert model.training  # the model's own mode given back


def readable(path: Path) -> tuple[int, int]:
    image = plt.imread(path)
    assert image.ndim == 3 and image.std() > 0.01, path  # not blank
    return image.shape[:2]


@pytest.mark.parametrize("name", ["step6", "step13"])
def test_the_four_figures_are_written_and_readable(tmp_path: Path, mnist, name: str) -> None:
    model = steps.get(name).build().eval()
    images, labels = mnist.test_images[:40], mnist.test_labels[:40]
    preds = torch.arange(40) % 10  # a guess: most of them wrong
    paths = insight.write_figures(model, images, labels, preds, tmp_path, prefix=f"{name}-")
    assert list(paths) == list(insight.FIGURES)
    for path in paths.values():
        assert path.parent == tmp_path and path.name.startswith(f"{name}-")
        h, w = readable(path)
        assert h > 150 and w > 300, path
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert readable(paths["feature-maps"])[0] > 100 * convs  # a row per convolution


def test_kernels_of_any_first_layer_and_saliency_with_nothing_wrong(tmp_path: Path, mnist) -> None:
    for i, first in enumerate(
        [nn.Conv2d(1, 4, 5), nn.Conv2d(1, 1, 3), nn.Conv2d(3, 6, 3, groups=3), nn.Conv2d(2, 3, 1)]
    ):
        insight.plot_kernels(nn.Sequential(first), tmp_path / f"k{i}.png")
        readable(tmp_path / f"k{i}.png")
    labels = mnist.test_labels[:5]
    fig = insight.plot_saliency(
        steps.get("step1").build(), mnist.test_images[:5], labels, labels, tmp_path / "none-wrong.png"
    )
    assert "no misclassified digits" in [t.get_text() for ax in fig.axes for t in ax.texts]
    readable(tmp_path / "none-wrong.png")


def test_without_a_path_a_figure_is_returned_and_nothing_written(tmp_path: Path, monkeypatch, mnist) -> None:
    monkeypatch.chdir(tmp_path)
    model = steps.get("step13").build()
    figs = [
        insight.plot_kernels(model),
        insight.plot_feature_maps(model, mnist.test_images[0]),
        insight.plot_receptive_field(model),
    ]
    assert len(figs[1].axes) == 1 + 9 * 8 + 1  # the input, 9 convolutions' 8 maps, the logits
    assert len([ax for ax in figs[2].axes if ax.patches]) == 8  # a panel per widening layer
    assert not list(tmp_path.iterdir())
    assert plt.get_fignums() == []  # outside pyplot: nothing left open, nothing shown twice


def test_ladder_show_writes_the_figures_of_a_stored_run(tmp_path: Path, capsys) -> None:
    s = steps.get("step13")
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    torch.save({"step": "step13", "state_dict": s.build().state_dict()}, run_dir / "model.pt")
    db = tmp_path / "runs" / "ladder.db"
    with Store(db) as store:
        store.add_run(
            RunRow(
                "r1",
                "step13",
                1,
                "test",
                s.recipe.to_dict(),
                s.params,
                "c0de",
                "abc123",
                0,
                "2.13.0",
                "cpu",
                1,
                str(run_dir),
                "host",
                1,
                "2026-01-01T00:00:00",
                "2026-01-01T00:02:00",
                "finished",
                120.0,
            )
        )
    out = tmp_path / "figures"
    assert cli.main(["show", "r1", "--db", str(db), "--figures", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in insight.FIGURES:
        assert re.search(rf"^{name}: .*{name}\.png$", printed, re.M)
        readable(out / f"{name}.png")


def test_a_network_without_convolutions_is_told_not_drawn(tmp_path: Path) -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(ValueError, match="no convolution"):
        insight.plot_kernels(mlp, tmp_path / "k.png")
    insight.plot_receptive_field(mlp, tmp_path / "rf.png")  # one empty panel, no crash
    assert insight.feature_maps(mlp, torch.zeros(28, 28, dtype=torch.uint8))[0] == []
