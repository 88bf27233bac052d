"""The fused BatchNorm block (fused.py) computes what the modules compute one by one, and the
allocator setting (train.keep_freed_memory) stops a training step's page faults."""

from __future__ import annotations

import copy
import resource
import sys

import pytest
import torch
from torch import nn

from mnist_ladder import steps
from mnist_ladder.engine import fused
from mnist_ladder.engine import layouts as layout
from mnist_ladder.engine import train as T
from mnist_ladder.engine.augment import SEED_AUGMENT, Augment
from mnist_ladder.engine.models import BatchNormNCHW, Conv, MaxPool2d

ORDERS = ["crbd", "cbrd", "cbdr", "cbr", "crb", "cb", "cbd"]


def _train_block(block: Conv, x: torch.Tensor, g: torch.Tensor, amp: bool, fuse: bool):
    """Output, input gradient, parameter gradients and BatchNorm buffers after one forward
    and backward, the dropout drawn from seed 5."""
    block.fused = fuse
    torch.manual_seed(5)
    x = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        y = block(x)
    grads = torch.autograd.grad(y, [x, *block.parameters()], g.to(y.dtype))
    bn = block[block.order.index("b")]
    return (y, *grads, bn.running_mean, bn.running_var, bn.num_batches_tracked)


def _spy_on_norm_block(monkeypatch) -> list:
    calls = []
    real = fused.norm_block

    def spy(*args, **kw):
        calls.append(args[0].shape)
        return real(*args, **kw)

    monkeypatch.setattr(fused, "norm_block", spy)
    return calls


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("order", ORDERS)
def test_fused_block_matches_the_modules_one_by_one(order: str, amp: bool) -> None:
    """fp32 against the modules in float64 (torch's own fp32 channels-last BatchNorm is the
    less exact of the two); bf16 autocast against the modules under the same autocast."""
    torch.manual_seed(0)
    block = Conv(6, 10, 3, order=order, dropout=0.1).to(memory_format=torch.channels_last)
    nn.init.uniform_(block[order.index("b")].weight, 0.5, 1.5)
    nn.init.uniform_(block[order.index("b")].bias, -0.5, 0.5)
    x = torch.randn(16, 6, 12, 12).contiguous(memory_format=torch.channels_last)
    g = torch.randn(16, 10, 10, 10)
    assert block.fused
    got = _train_block(copy.deepcopy(block), x, g, amp, fuse=True)
    if amp:
        want = _train_block(block, x, g, amp, fuse=False)
    else:
        want = _train_block(block.double(), x.double(), g.double(), amp, fuse=False)
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    if "d" in order:  # the same elements dropped (and, after a ReLU, the same zeros)
        assert torch.equal(got[0] == 0, want[0] == 0)
    # relative to each tensor's scale: a weight gradient sums thousands of bf16 products
    tol = 2e-2 if amp else 1e-5
    for a, b in zip(got, want, strict=True):
        a, b = a.double(), b.double()
        assert (a - b).abs().max() <= tol * b.abs().max().clamp(min=1)


@pytest.mark.parametrize("name", list(steps.STEPS))
def test_every_step_trains_the_same_fused_or_not(name: str, monkeypatch) -> None:
    """One fp32 training step of every registered network, fused, against the same step of
    its modules one by one in float64: same loss and gradients to 1e-4 of each tensor's
    scale. (torch's fp32 channels-last BatchNorm is off by up to 1e-2 at Step 6's first
    layers here; the fused block's column statistics are exact.)"""
    step = steps.get(name)
    torch.manual_seed(0)
    model = layout.apply(step.build(), "cl")
    if not any(isinstance(b, Conv) and b.fused for b in model.modules()):
        pytest.skip(f"{name} has no BatchNorm block")
    calls = _spy_on_norm_block(monkeypatch)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    results = []
    for fuse, dtype in ((True, torch.float32), (False, torch.float64)):
        m = copy.deepcopy(model).to(dtype)
        for block in m.modules():
            if isinstance(block, Conv):
                block.fused = block.fused and fuse
        torch.manual_seed(1)
        loss = nn.functional.cross_entropy(m(x.to(dtype)), y)
        loss.backward()
        results.append([loss, *(p.grad for p in m.parameters())])
    assert calls  # the fused path ran
    for a, b in zip(*results, strict=True):
        a, b = a.double(), b.double()
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()


def test_fused_block_at_shapes_whose_rows_are_not_whole_bytes_of_the_dropout_mask() -> None:
    """7 channels at an odd number of positions: rows of 7 values, so a row's dropout bits
    start mid-byte (the kernels' slow path), and the threads' row ranges are uneven."""
    assert fused.tile_factor(7, 5 * 5 * 5) * 7 % 8 != 0
    torch.manual_seed(0)
    block = Conv(3, 7, 3, order="crbd", dropout=0.2).to(memory_format=torch.channels_last)
    x = torch.randn(5, 3, 7, 7).contiguous(memory_format=torch.channels_last)
    g = torch.randn(5, 7, 5, 5)
    got = _train_block(copy.deepcopy(block), x, g, False, fuse=True)
    want = _train_block(block.double(), x.double(), g.double(), False, fuse=False)
    assert torch.equal(got[0] == 0, want[0] == 0)
    for a, b in zip(got, want, strict=True):
        assert (a.double() - b.double()).abs().max() <= 1e-5 * b.double().abs().max().clamp(min=1)


def test_kernels_are_built_once_per_machine_and_missed_only_for_speed(monkeypatch, tmp_path) -> None:
    """Built into the machine cache folder on first use; without a C compiler, a warning and
    the blocks run as modules (same results, more slowly)."""
    monkeypatch.setenv("MNIST_LADDER_CACHE", str(tmp_path))
    fused.kernels.cache_clear()
    try:
        assert fused.kernels() is not None
        assert len(list((tmp_path / "kernels").glob("kernels-*.so"))) == 1
        fused.kernels.cache_clear()
        assert fused.kernels() is not None  # the same build, found
        assert len(list((tmp_path / "kernels").glob("*"))) == 1
        fused.kernels.cache_clear()
        monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
        with pytest.warns(UserWarning, match="could not be built"):
            assert fused.kernels() is None
        calls = _spy_on_norm_block(monkeypatch)
        block = Conv(4, 8, 3, order="cbrd", dropout=0.1)
        y = block(torch.randn(4, 4, 8, 8).contiguous(memory_format=torch.channels_last))
        assert not calls and y.shape == (4, 8, 6, 6)
    finally:
        fused.kernels.cache_clear()


@pytest.mark.parametrize("amp", [False, True])
def test_eval_runs_fused_with_the_running_statistics(amp: bool, monkeypatch) -> None:
    calls = _spy_on_norm_block(monkeypatch)
    step = steps.get("step6")
    torch.manual_seed(0)
    model = layout.apply(step.build(), "cl")
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        for _ in range(3):
            model(x)  # running statistics that are not the initial ones
        model.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            got = model(x)
        assert calls
        for block in model.modules():
            if isinstance(block, Conv):
                block.fused = False
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            want = model(x)
    assert (got.double() - want.double()).abs().max() <= (3e-2 if amp else 1e-4) * want.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [(12, 12), (13, 7), (2, 3)])  # odd: a row or column uncovered
def test_max_pool_is_torchs_bit_for_bit(dtype: torch.dtype, size: tuple[int, int]) -> None:
    """Values and gradient routes as torch's: ties (every window of a 2x-upsampled map is
    tied) to the first in row-major order, NaN winning its window."""
    torch.manual_seed(0)
    h, w = size
    x = torch.randn(3, 10, (h + 1) // 2, (w + 1) // 2).repeat_interleave(2, 2).repeat_interleave(2, 3)
    x = x[:, :, :h, :w].clone()
    x[0, 0, 0, 1] = float("nan")
    x[1, 3] = torch.randn(h, w)  # untied channels too
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    pool = MaxPool2d(2)
    assert fused.can_pool(x, pool)
    g = torch.randn(3, 10, h // 2, w // 2).to(dtype)
    results = []
    for fast in (True, False):
        xi = x.detach().requires_grad_()
        out = pool(xi) if fast else nn.functional.max_pool2d(xi, 2)
        out.backward(g)
        results.append((out, xi.grad))
    (got, got_grad), (want, want_grad) = results
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
    assert torch.equal(got.nan_to_num(), want.nan_to_num())
    assert torch.equal(got_grad, want_grad)


def test_fusable_orders() -> None:
    for order in ORDERS:
        assert fused.fusable(order), order
    for order in ["c", "cr", "cbrr", "crbr", "cdb", "cbdd", "bc", "crrb"]:
        assert not fused.fusable(order), order


def test_tile_rows_hold_whole_channel_vectors() -> None:
    for channels, positions in [(8, 128 * 26 * 26), (10, 128 * 100), (18, 96 * 36), (16, 1), (7, 3)]:
        k = fused.tile_factor(channels, positions)
        assert positions % k == 0 and (k == 1 or k * channels <= fused.MAX_TILE)
    assert fused.tile_factor(8, 128 * 26 * 26) == 16  # 128 values a row


def test_fused_path_runs_only_where_it_computes_the_same(monkeypatch) -> None:
    calls = _spy_on_norm_block(monkeypatch)
    block = Conv(4, 8, 3, order="cbrd", dropout=0.1)
    x = torch.randn(4, 4, 8, 8)
    block(x.contiguous(memory_format=torch.channels_last))  # training, channels-last: fused
    assert len(calls) == 1
    block(x)  # NCHW
    block.eval()
    block(x.contiguous(memory_format=torch.channels_last))  # eval wanting a gradient
    block.train()
    handle = block[1].register_forward_hook(lambda *a: None)  # someone watching a layer
    block(x.contiguous(memory_format=torch.channels_last))
    handle.remove()
    nchw_bn = layout.apply(Conv(4, 8, 3, order="cbr"), "cl+bn-nchw")
    assert isinstance(nchw_bn[1], BatchNormNCHW)
    nchw_bn(x.contiguous(memory_format=torch.channels_last))
    Conv(4, 8, 3, order="cbr").double()(x.double().contiguous(memory_format=torch.channels_last))
    assert len(calls) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_training_steps_stop_page_faulting_their_activations() -> None:
    step = steps.get("step6")
    model = layout.apply(step.build(), "cl")
    opt = T.make_optimizer(model, step.recipe)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128, 1))  # one seed
    T.keep_freed_memory()
    for _ in range(5):
        T.optimizer_step(model, opt, x, y, step.recipe, amp=False)
    per_step = []
    for _ in range(5):  # the median of five windows: a one-off fault burst elsewhere is not this
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            T.optimizer_step(model, opt, x, y, step.recipe, amp=False)
        per_step.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
    assert sorted(per_step)[2] < 100, per_step  # about 2,000 a step with glibc's defaults


@pytest.mark.parametrize(
    "cfg",
    [
        SEED_AUGMENT,
        Augment(rotation=15, translate=0.2, scale=(0.7, 1.3)),
        Augment(brightness=0.4, contrast=0.4),
        Augment(),
    ],
    ids=["seed", "geometric", "photometric", "none"],
)
def test_kernel_augmentation_is_torchs_up_to_rounding(mnist, cfg: Augment, monkeypatch) -> None:
    """kernels.c's warp, jitter and normalization give torch's images (the same random
    numbers, so the same transforms), at an odd number of images and over two chunks."""
    images = mnist.train_images[:3_001].unsqueeze(1).contiguous()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(T, "EPOCH_CHUNK", 2_000)
    assert fused.can_augment(images, cfg)
    g_kernel, g_torch = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    by_kernel = T.augmented(images, order, cfg, g_kernel)
    monkeypatch.setattr(fused, "can_augment", lambda *a: False)
    by_torch = T.augmented(images, order, cfg, g_torch)
    assert torch.equal(g_kernel.get_state(), g_torch.get_state())  # the same draws
    torch.testing.assert_close(by_kernel, by_torch, rtol=0, atol=1e-4)
    exact = (by_kernel == by_torch).float().mean().item()
    assert exact > 0.8, exact  # the same arithmetic: most pixels agree to the bit
    if cfg.geometric or cfg.photometric:
        assert not torch.equal(by_kernel, T.normalize(T.to_unit(images[order])))


def test_elastic_and_cuda_images_are_augmented_by_torch(mnist) -> None:
    images = mnist.train_images[:8].unsqueeze(1).contiguous()
    assert not fused.can_augment(images, Augment(elastic=2.0))
    assert not fused.can_augment(images.float(), SEED_AUGMENT)
    if torch.cuda.is_available():
        assert not fused.can_augment(images.cuda(), SEED_AUGMENT)
