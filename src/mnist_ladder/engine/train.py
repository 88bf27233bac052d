"""The one training engine: `fit` runs any step's recipe and yields one record per epoch.

Shaped like pytorch/examples' mnist: `train(...)` runs one epoch, `test(...)` evaluates, and
`fit(...)` strings them together. The whole data set lives on the device as one tensor;
batches are drawn by index and augmented a whole batch at a time. The training loop never
asks the device for a number until the epoch ends.
"""

from __future__ import annotations

import ctypes
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from ..core.errors import ConfigError, LadderError
from . import augment as aug
from . import fused
from .data import MEAN, MNIST, STD
from .layouts import apply
from .step import Recipe, Step

VAL_SIZE = 10_000  # the validation protocol holds out the last 10,000 training images
EPOCH_CHUNK = 8192  # images augmented at once: large enough to amortize, small enough for memory


# ---------------------------------------------------------------- device and precision


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for but is not available on this machine")
    return torch.device(name)


def pick_amp(name: str, device: torch.device) -> bool:
    """bf16 autocast: on CUDA with bf16 support, on CPUs with native bf16 (AVX512-BF16/AMX)."""
    if name not in ("auto", "bf16", "off"):
        raise ConfigError(f"unknown precision {name!r}; use auto, bf16 or off")
    if name != "auto":
        return name == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the kernel.

    By default glibc serves blocks of a few MB (a batch's activations) with mmap and hands
    them back on free, or trims the heap once its free top passes a threshold, so every
    training step page-faulted its activations in again: about 2,000 page faults a step at
    Step 6, a fifth of its time. Fixed thresholds stop both; tcmalloc or jemalloc would too,
    but need LD_PRELOAD before Python starts. A no-op where libc has no `mallopt` (macOS,
    musl, Windows).
    """
    global _freed_memory_kept
    if _freed_memory_kept:
        return
    _freed_memory_kept = True
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_trim_threshold, 512 << 20)
    mallopt(m_mmap_threshold, 512 << 20)


_freed_memory_kept = False


# ---------------------------------------------------------------- data on the device


@dataclass
class DeviceData:
    train_x: torch.Tensor  # uint8 [N, 1, 28, 28]: augmented and normalized once per epoch
    train_y: torch.Tensor
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (normalized x, y)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 1, 28, 28] or [N, 28, 28] -> float [N, 1, 28, 28] in [0, 1]."""
    return images.view(-1, 1, 28, 28).float().div_(255)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


def prepare(
    mnist: MNIST,
    device: torch.device,
    *,
    val: bool = False,
    train_limit: int | None = None,
    eval_limit: int | None = None,
    test: bool = True,
) -> DeviceData:
    """Seed protocol: train on 60,000, evaluate on test. Validation protocol (`val`): train on
    the first 50,000, evaluate on the last 10,000 training images (and on test unless `test`
    is False: a search must never see it)."""
    train_x, train_y = mnist.train_images, mnist.train_labels
    eval_sets = {"test": (mnist.test_images, mnist.test_labels)} if test else {}
    if val:
        eval_sets["val"] = (train_x[-VAL_SIZE:], train_y[-VAL_SIZE:])
        train_x, train_y = train_x[:-VAL_SIZE], train_y[:-VAL_SIZE]
    return DeviceData(
        train_x=train_x[:train_limit].to(device).unsqueeze(1),
        train_y=train_y[:train_limit].to(device),
        eval_sets={
            k: (normalize(to_unit(x[:eval_limit].to(device))), y[:eval_limit].to(device))
            for k, (x, y) in eval_sets.items()
        },
    )


# ---------------------------------------------------------------- optimizer and schedule


def make_optimizer(model: nn.Module, r: Recipe) -> torch.optim.Optimizer:
    params: list = list(model.parameters())
    if not r.decay_norm_and_bias:  # vectors (BatchNorm's scale and shift, biases) not decayed
        vectors = [p for p in model.parameters() if p.ndim <= 1]
        weights = [p for p in model.parameters() if p.ndim > 1]
        params = [{"params": weights}, {"params": vectors, "weight_decay": 0.0}]
    if r.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=r.lr, momentum=r.momentum, nesterov=r.nesterov, weight_decay=r.weight_decay, fused=True
        )
    if r.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay, fused=True)
    raise ConfigError(f"unknown optimizer {r.optimizer!r}")


def make_scheduler(opt: torch.optim.Optimizer, r: Recipe, steps_per_epoch: int):
    """Returns (scheduler or None, stepped per batch?)."""
    if r.scheduler == "none":
        return None, False
    if r.scheduler == "onecycle":  # the seed's: stepped every batch, momentum cycles too
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=r.max_lr, epochs=r.epochs, steps_per_epoch=steps_per_epoch, pct_start=r.pct_start
        ), True
    if r.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=r.step_size, gamma=r.gamma), False
    raise ConfigError(f"unknown scheduler {r.scheduler!r}")


# ---------------------------------------------------------------- train and test


@dataclass
class TrainState:
    """Everything needed to continue a run exactly where it stopped."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    per_batch: bool
    generator: torch.Generator
    ema: AveragedModel | None = None  # the weights evaluated and saved when the recipe has `ema`
    history: list[EpochResult] = field(default_factory=list)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "generator": self.generator.get_state(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "history": [asdict(h) for h in self.history],
        }

    def load_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        if self.scheduler:
            self.scheduler.load_state_dict(sd["scheduler"])
        self.generator.set_state(sd["generator"])
        if self.ema is not None:
            self.ema.load_state_dict(sd["ema"])
        torch.set_rng_state(sd["cpu_rng"])
        if sd["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(sd["cuda_rng"])
        self.history = [EpochResult(**h) for h in sd["history"]]


@dataclass
class EpochResult:
    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    test_loss: float | None
    test_acc: float | None
    seconds: float
    val_loss: float | None = None
    val_acc: float | None = None


def in_notebook() -> bool:
    return "ipykernel" in sys.modules


def _progress(total: int, desc: str) -> tqdm:
    # A bar on a terminal or in a notebook (tqdm.auto picks the widget there); nothing per
    # batch when piped (the epoch line says it all).
    return tqdm(
        total=total,
        desc=desc,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
        disable=not (in_notebook() or sys.stderr.isatty()),
    )


def optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe,
    amp: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch: forward (under autocast), loss, backward, update; returns (loss, logits)."""
    with autocast(x.device, amp):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


def augmented(
    images: torch.Tensor, order: torch.Tensor, cfg: aug.Augment, generator: torch.Generator
) -> torch.Tensor:
    """images[order] (uint8), augmented and normalized: float [N, 1, 28, 28]. In chunks,
    written into one buffer (concatenating would hold the epoch twice at peak); on the CPU by
    kernels.c, one pass an image, elsewhere by torch's ops. The random numbers are the same
    either way."""
    x_epoch = torch.empty(len(order), 1, 28, 28, device=images.device)
    by_kernel = fused.can_augment(images, cfg)
    for start, idx in zip(range(0, len(order), EPOCH_CHUNK), order.split(EPOCH_CHUNK), strict=True):
        part = x_epoch[start : start + len(idx)]
        if by_kernel:
            fused.augment_images(images, idx, cfg, aug.draw(cfg, len(idx), generator), part, MEAN, STD)
        else:
            part.copy_(normalize(aug.augment(to_unit(images[idx]), cfg, generator)))
    return x_epoch


class Diverged(LadderError):
    """The training loss became NaN or infinite: the run cannot mean anything after it."""

    def __init__(self, batch: int, batches: int, epoch: int | None = None) -> None:
        self.batch, self.batches, self.epoch = batch, batches, epoch
        super().__init__(self.where())

    def where(self) -> str:
        at = f"epoch {self.epoch}, " if self.epoch is not None else ""
        return f"the training loss became NaN or infinite at {at}batch {self.batch} of {self.batches}"


def train(
    state: TrainState, data: DeviceData, recipe: Recipe, amp: bool = False, desc: str = ""
) -> tuple[float, float]:
    """One epoch of `state`'s model and optimizer; returns (mean loss, accuracy %) over the
    augmented training images."""
    model, optimizer, scheduler, ema = state.model, state.optimizer, state.scheduler, state.ema
    generator = state.generator
    model.train()
    n, device, batch_size = len(data.train_y), data.train_y.device, recipe.batch_size
    # The epoch's images, shuffled, augmented and normalized up front: batches are then plain
    # slices, and per-batch work is only the model's.
    order = torch.randperm(n, generator=generator, device=device)
    x_epoch = augmented(data.train_x, order, recipe.augment, generator)
    y_epoch = data.train_y[order]
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    # The first batch whose loss is not finite, kept on the device: reading it every batch
    # would stall an accelerator's queue, so it is read every few batches there (every
    # batch on the CPU, where reading costs nothing), and training stops at once.
    first_nonfinite = torch.full((), -1, device=device, dtype=torch.long)
    check_every = 1 if device.type == "cpu" else 16
    batches = math.ceil(n / batch_size)
    with _progress(batches, desc) as bar:
        for batch, start in enumerate(range(0, n, batch_size)):
            x, y = x_epoch[start : start + batch_size], y_epoch[start : start + batch_size]
            loss, logits = optimizer_step(model, optimizer, x, y, recipe, amp)
            first_nonfinite = torch.where(
                (first_nonfinite < 0) & ~torch.isfinite(loss.detach()), batch, first_nonfinite
            )
            if (batch % check_every == check_every - 1 or batch == batches - 1) and (
                bad := int(first_nonfinite)
            ) >= 0:
                raise Diverged(bad + 1, batches)
            if state.per_batch:
                scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            bar.update()
    return loss_sum.item() / n, 100.0 * correct.item() / n


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, amp: bool = False, batch_size: int = 2000) -> torch.Tensor:
    """Logits (float32) for normalized images x, in large batches."""
    model.eval()
    with autocast(x.device, amp):
        return torch.cat([model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])


def test(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool = False) -> tuple[float, float]:
    """(mean loss, accuracy %) on a held-out set."""
    logits = predict(model, x, amp)
    loss = F.cross_entropy(logits, y).item()
    return loss, 100.0 * (logits.argmax(1) == y).float().mean().item()


# ---------------------------------------------------------------- fit


def ema_update(decay: float):
    """An exponential moving average with warm-up, as `AveragedModel`'s `multi_avg_fn`.

    The decay grows as (1 + n) / (10 + n) up to `decay`, so the average forgets the random
    initial weights within the first epoch (torch's `get_ema_multi_avg_fn` keeps them at
    weight decay^n, which left the first epochs' averaged model at chance). Computed on the
    device: no host synchronisation per step.
    """

    def update(ema: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        d = ((1 + n) / (10 + n)).clamp(max=decay)
        for dtype in {t.dtype for t in ema}:  # BatchNorm's batch counter is an integer
            pairs = [(e, c) for e, c in zip(ema, current, strict=True) if e.dtype == dtype]
            if dtype.is_floating_point:
                torch._foreach_lerp_([e for e, _ in pairs], [c for _, c in pairs], (1 - d).to(dtype))
            else:
                torch._foreach_copy_([e for e, _ in pairs], [c for _, c in pairs])

    return update


def set_determinism(seed: int) -> None:
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def build_model(step: Step, device: torch.device, layout: str = "cl") -> nn.Module:
    """`step`'s model on `device` in memory layout `layout` (a name in `layout.LAYOUTS`)."""
    return apply(step.build(), layout).to(device)


def new_state(
    step: Step, recipe: Recipe, data: DeviceData, seed: int, device: torch.device, layout: str = "cl"
) -> TrainState:
    set_determinism(seed)
    model = build_model(step, device, layout)
    optimizer = make_optimizer(model, recipe)
    steps_per_epoch = math.ceil(len(data.train_y) / recipe.batch_size)
    scheduler, per_batch = make_scheduler(optimizer, recipe, steps_per_epoch)
    generator = torch.Generator(device=device).manual_seed(seed)
    # BatchNorm statistics are averaged with the weights (use_buffers), so the EMA model
    # evaluates without a recalibration pass.
    ema = AveragedModel(model, multi_avg_fn=ema_update(recipe.ema), use_buffers=True) if recipe.ema else None
    return TrainState(model, optimizer, scheduler, per_batch, generator, ema)


def fit(
    step: Step,
    data: DeviceData,
    recipe: Recipe,
    *,
    seed: int = 1,
    amp: bool = False,
    state: TrainState | None = None,
    layout: str = "cl",
    on_epoch: Callable[[EpochResult, TrainState], None] | None = None,
) -> Iterator[EpochResult]:
    """Train `step`'s model with `recipe` and yield an EpochResult after every epoch.

    Pass `state` (from `new_state` + `load_state_dict`) to continue an interrupted run.
    `on_epoch` runs after each epoch, before the result is yielded (e.g. to checkpoint).
    """
    device = data.train_y.device
    if device.type == "cpu":
        keep_freed_memory()
    if state is None:
        state = new_state(step, recipe, data, seed, device, layout)
    for epoch in range(len(state.history) + 1, recipe.epochs + 1):
        t0 = time.perf_counter()
        lr = state.optimizer.param_groups[0]["lr"]
        # Augmentation stops for the last `clean_last` epochs: a small network that can no
        # longer fit the distorted digits gets to fit the real ones while the LR anneals.
        epoch_recipe = (
            recipe if epoch <= recipe.epochs - recipe.clean_last else replace(recipe, augment=aug.Augment())
        )
        try:
            train_loss, train_acc = train(
                state, data, epoch_recipe, amp, desc=f"{step.name} epoch {epoch}/{recipe.epochs}"
            )
        except Diverged as e:
            raise Diverged(e.batch, e.batches, epoch) from None
        if state.scheduler is not None and not state.per_batch:
            state.scheduler.step()
        scores = {name: test(state.eval_model, x, y, amp) for name, (x, y) in data.eval_sets.items()}
        val = scores.get("val", (None, None))
        result = EpochResult(
            epoch,
            lr,
            train_loss,
            train_acc,
            *scores.get("test", (None, None)),
            seconds=time.perf_counter() - t0,
            val_loss=val[0],
            val_acc=val[1],
        )
        state.history.append(result)
        if on_epoch:
            on_epoch(result, state)
        yield result
