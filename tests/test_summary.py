from __future__ import annotations

from torch import nn

from mnist_ladder import steps
from mnist_ladder.views.summary import layer_rows, receptive_field, summary_table


def conv_rfs(name: str) -> list[int]:
    return [r.rf for r in layer_rows(steps.get(name).build()) if r.name in ("Conv2d", "MaxPool2d")]


def test_step6_receptive_field_by_hand() -> None:
    # conv3 -> 3, conv3 -> 5, maxpool2 -> 6 (jump 2), 1x1 -> 6, conv3 -> 10, 14, 18 before GAP
    assert conv_rfs("step6")[:7] == [3, 5, 6, 6, 10, 14, 18]
    rows = layer_rows(steps.get("step6").build())
    gap = next(r for r in rows if r.name == "AvgPool2d")
    assert (gap.rf, gap.jump, gap.output) == (28, 12, (18, 1, 1))


def test_step0_receptive_field_by_hand() -> None:
    # pad-1 convs: 3, 5, pool 6 (jump 2), 10, 14, pool 16 (jump 4), 24, 32, 40
    assert conv_rfs("step0") == [3, 5, 6, 10, 14, 16, 24, 32, 40]


def test_strided_and_dilated_layers() -> None:
    layers = [nn.Conv2d(1, 1, 3, stride=2), nn.Conv2d(1, 1, 3, dilation=2), nn.Conv2d(1, 1, 1)]
    assert receptive_field(layers) == [(3, 2), (11, 2), (11, 2)]


def test_table_lists_shapes_params_and_total() -> None:
    table = summary_table(steps.get("step6").build())
    assert "16x24x24" in table and "2,592" in table and "total parameters: 6,720" in table


def test_searched_architectures_with_adaptive_gap() -> None:
    from mnist_ladder.engine.family import build

    arch = {"convs1": [8, 16], "transition": 8, "convs2": [10, 16, 18], "head": 16, "dropout": 0.03}
    rows = layer_rows(build(arch))
    gap = next(r for r in rows if r.name == "AdaptiveAvgPool2d")
    assert (gap.rf, gap.output) == (28, (18, 1, 1))  # 18 before GAP, as Step 6
    assert [r.rf for r in rows if r.name == "Conv2d"][:6] == [3, 5, 6, 10, 14, 18]
    assert sum(r.params for r in rows) == 6_720  # Step 6's shape, as data
