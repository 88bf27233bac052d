from __future__ import annotations

import pytest
import torch

from mnist_ladder import steps
from mnist_ladder.engine.models import Conv, Dropout, count_parameters


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
        6_379_786,
        4_572,
        5_088,
        5_088,
        6_124,
        6_124,
        6_720,
    ]
    assert steps.get("step6").params < 8_000


def test_frontier_steps_keep_their_budgets() -> None:
    assert steps.get("step7").params <= 4_000  # the budget for holding 99.4
    assert steps.get("step8").params < 8_000
    assert steps.get("step9").params < 8_000
    assert steps.get("step10").params <= 4_000
    assert steps.get("step11").params <= 4_000
    assert steps.get("step12").params < 8_000
    assert steps.get("step13").params <= 4_000
    assert steps.get("step14").params <= 3_000  # the frontier issue's smaller budget


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
    from mnist_ladder.engine.models import separable

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


# ---------------------------------------------------------------- the layouts' ops vs torch's

LAYOUTS = [torch.contiguous_format, torch.channels_last]


def _grads(module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor, amp: bool):
    x = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        y = module(x)
    return (y, *torch.autograd.grad(y, [x, *module.parameters()], g.to(y.dtype)))


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("memory_format", LAYOUTS)
def test_fast_dropout_drops_the_same_elements_in_any_layout(memory_format, amp) -> None:
    x, g = torch.randn(16, 6, 10, 10), torch.randn(16, 6, 10, 10)
    torch.manual_seed(5)
    y0, gx0 = _grads(Dropout(0.2), x, g, amp)  # NCHW
    torch.manual_seed(5)
    y, gx = _grads(Dropout(0.2), x.contiguous(memory_format=memory_format), g, amp)
    assert y.is_contiguous(memory_format=memory_format)
    assert torch.equal(y, y0) and torch.equal(gx, gx0)
    # and it is x * mask with the reference mask, forward and backward
    mask = (y != 0).float() / 0.8
    assert torch.allclose(y.float(), x * mask, rtol=1e-2 if amp else 1e-6)
    assert torch.allclose(gx.float(), g * mask, rtol=1e-2 if amp else 1e-6)


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("memory_format", LAYOUTS)
def test_pool_and_batchnorm_in_the_other_layout_match_torch(memory_format, amp) -> None:
    from mnist_ladder.engine.models import BatchNormNCHW, MaxPoolCL

    torch.manual_seed(0)
    # ReLU'd input: windows of equal zeros, where the gradient's tie-breaking shows
    x = torch.randn(8, 6, 13, 12).relu().contiguous(memory_format=memory_format)
    pooled = torch.randn(8, 6, 6, 6)
    for ours, ref, g in [
        (MaxPoolCL(2), torch.nn.MaxPool2d(2), pooled),
        (BatchNormNCHW(6), torch.nn.BatchNorm2d(6), torch.randn(8, 6, 13, 12)),
    ]:
        if isinstance(ref, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(ref.weight)
        ours.load_state_dict(ref.state_dict())
        got, want = _grads(ours, x, g, amp), _grads(ref, x, g, amp)
        assert got[0].is_contiguous(memory_format=memory_format)  # hands back the layout it got
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=2e-2 if amp else 1e-5, atol=2e-2 if amp else 1e-5)
        for a, b in zip(ours.state_dict().values(), ref.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b)  # running statistics too
