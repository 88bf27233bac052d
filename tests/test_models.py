from __future__ import annotations

import pytest
import torch

from mnist_ladder import steps
from mnist_ladder.models import Conv, Dropout, count_parameters


@pytest.mark.parametrize("name", list(steps.STEPS))
def test_every_step_builds_with_its_pinned_parameter_count(name: str) -> None:
    step = steps.get(name)
    model = step.build()
    assert count_parameters(model) == step.params
    if step.seed:
        assert step.seed.params == step.params  # the seed document's own count
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_seed_parameter_counts() -> None:
    assert [steps.get(f"step{i}").params for i in range(7)] == [
        6_379_786, 4_572, 5_088, 5_088, 6_124, 6_124, 6_720]
    assert steps.get("step6").params < 8_000


def test_frontier_steps_keep_their_budgets() -> None:
    assert steps.get("step7").params <= 4_000  # the budget for holding 99.4
    assert steps.get("step8").params < 8_000
    assert steps.get("step9").params < 8_000
    assert steps.get("step10").params <= 4_000
    assert steps.get("step11").params <= 4_000
    assert steps.get("step12").params < 8_000
    assert steps.get("step13").params <= 4_000


@pytest.mark.parametrize("name", [f"{s.name}.{v.name}" for s in steps.STEPS.values() for v in s.tried])
def test_every_tried_variant_builds_and_differs_from_its_step(name: str) -> None:
    variant = steps.get(name)
    parent = steps.get(variant.parent)
    assert variant.params == count_parameters(variant.build())
    assert variant.build()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    differs_in_model = repr(variant.build()) != repr(parent.build())
    assert differs_in_model or variant.recipe != parent.recipe


def test_variant_names_resolve_and_unknown_ones_fail() -> None:
    with pytest.raises(steps.UnknownStep):
        steps.get("step7.nothing-like-this")
    with pytest.raises(steps.UnknownStep):
        steps.get("step99.x")


def test_separable_block_costs_depthwise_plus_pointwise() -> None:
    from mnist_ladder.models import separable
    assert count_parameters(separable(12, 16)) == 12 * 9 + 12 * 16 + 2 * 16


def test_batchnorm_buffers_do_not_count() -> None:
    block = Conv(4, 8, order="cb")
    assert count_parameters(block) == 4 * 8 * 9 + 2 * 8  # weights + BN affine; not running stats


def test_unknown_step_names_the_valid_ones() -> None:
    with pytest.raises(steps.UnknownStep) as e:
        steps.get("step99")
    assert "step0" in str(e.value) and "step6" in str(e.value)


def test_bad_block_order_is_rejected() -> None:
    with pytest.raises(ValueError):
        Conv(1, 8, order="bx")


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_fast_dropout_has_dropout_statistics(memory_format: torch.memory_format) -> None:
    torch.manual_seed(0)
    drop = Dropout(0.03)
    x = torch.ones(64, 16, 24, 24).contiguous(memory_format=memory_format)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.03) < 0.002
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.97))
    assert abs(y.mean().item() - 1.0) < 0.003  # unbiased
    # independent positions: the dropped fraction is the same in every channel
    per_channel = (y == 0).float().mean(dim=(0, 2, 3))
    assert per_channel.std().item() < 0.005
    drop.eval()
    assert torch.equal(drop(x), x)


def test_fast_dropout_gradient_matches_its_mask() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 4, 5, 5, requires_grad=True)
    y = Dropout(0.3)(x)
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)
