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
from .pack import pack
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
    """Everything needed to continue a run, or a group of seeds trained together (`pack.py`),
    exactly where it stopped. One entry a seed in `seeds`, `generators`, `dropout_generators`
    and `histories`; `model` is the seeds' packed network (the network itself for one)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    per_batch: bool
    seeds: list[int]
    generators: list[torch.Generator]  # each seed's data order and augmentation draws
    dropout_generators: list[torch.Generator]  # each seed's dropout masks
    ema: AveragedModel | None = None  # the weights evaluated and saved when the recipe has `ema`
    histories: list[list[EpochResult]] = field(default_factory=list)
    diverged: dict[int, Diverged] = field(default_factory=dict)  # seed index -> where

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    @property
    def epochs_done(self) -> int:
        return max(len(h) for h in self.histories)

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "seeds": list(self.seeds),
            "generators": [g.get_state() for g in self.generators],
            "dropout_generators": [g.get_state() for g in self.dropout_generators],
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "histories": [[asdict(h) for h in history] for history in self.histories],
            "diverged": {k: (d.batch, d.batches, d.epoch) for k, d in self.diverged.items()},
        }

    def load_state_dict(self, sd: dict) -> None:
        if list(sd["seeds"]) != list(self.seeds):
            raise ValueError(f"the checkpoint holds seeds {sd['seeds']}, not {self.seeds}")
        self.model.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        if self.scheduler:
            self.scheduler.load_state_dict(sd["scheduler"])
        for g, state in zip(self.generators, sd["generators"], strict=True):
            g.set_state(state)
        for g, state in zip(self.dropout_generators, sd["dropout_generators"], strict=True):
            g.set_state(state)
        if self.ema is not None:
            self.ema.load_state_dict(sd["ema"])
        torch.set_rng_state(sd["cpu_rng"])
        if sd["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(sd["cuda_rng"])
        self.histories = [[EpochResult(**h) for h in history] for history in sd["histories"]]
        self.diverged = {int(k): Diverged(*where) for k, where in sd.get("diverged", {}).items()}


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
    """One batch of K seeds (x [B, K, 28, 28], y [B, K]; K = 1 for one run): forward (under
    autocast), each seed's mean loss, backward of their sum (so each seed's gradient is its
    own), update; returns (loss a seed [K], logits [B, K, 10])."""
    with autocast(x.device, amp):
        logits = model(x)
    logits = logits.float().view(len(x), y.shape[1], -1)
    per_seed = F.cross_entropy(
        logits.flatten(0, 1), y.flatten(), reduction="none", label_smoothing=recipe.label_smoothing
    )
    loss = per_seed.view_as(y).mean(0)
    optimizer.zero_grad(set_to_none=True)
    loss.sum().backward()
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

    def __reduce__(self):
        return Diverged, (self.batch, self.batches, self.epoch)

    def where(self) -> str:
        at = f"epoch {self.epoch}, " if self.epoch is not None else ""
        return f"the training loss became NaN or infinite at {at}batch {self.batch} of {self.batches}"


def epoch_batches(state: TrainState, data: DeviceData, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """The epoch's images for every seed, each shuffled, augmented and normalized from its
    own generator: x [N, K, 28, 28], y [N, K]. Batches are then plain slices, and per-batch
    work is only the model's."""
    n, device = len(data.train_y), data.train_y.device
    orders = [torch.randperm(n, generator=g, device=device) for g in state.generators]
    if len(orders) == 1:
        x = augmented(data.train_x, orders[0], recipe.augment, state.generators[0])
        return x, data.train_y[orders[0]].unsqueeze(1)
    x = torch.empty(n, len(orders), 28, 28, device=device)
    for k, (order, g) in enumerate(zip(orders, state.generators, strict=True)):
        x[:, k] = augmented(data.train_x, order, recipe.augment, g)[:, 0]
    return x, torch.stack([data.train_y[o] for o in orders], 1)


def train(
    state: TrainState, data: DeviceData, recipe: Recipe, amp: bool = False, desc: str = ""
) -> list[tuple[float, float]]:
    """One epoch of `state`'s seeds; returns each seed's (mean loss, accuracy %) over its
    augmented training images. A seed whose loss stops being finite is recorded in
    `state.diverged` and the others train on (no computation crosses seeds); when none is
    left, Diverged is raised."""
    model, optimizer, scheduler, ema = state.model, state.optimizer, state.scheduler, state.ema
    model.train()
    n, device, batch_size, seeds = len(data.train_y), data.train_y.device, recipe.batch_size, len(state.seeds)
    x_epoch, y_epoch = epoch_batches(state, data, recipe)
    loss_sum = torch.zeros(seeds, device=device)
    correct = torch.zeros(seeds, device=device, dtype=torch.long)
    # Each seed's first batch whose loss is not finite, kept on the device: reading it every
    # batch would stall an accelerator's queue, so it is read every few batches there (every
    # batch on the CPU, where reading costs nothing).
    first_nonfinite = torch.full((seeds,), -1, device=device, dtype=torch.long)
    check_every = 1 if device.type == "cpu" else 16
    batches = math.ceil(n / batch_size)
    with _progress(batches, desc) as bar, fused.dropout_streams(state.dropout_generators):
        for batch, start in enumerate(range(0, n, batch_size)):
            x, y = x_epoch[start : start + batch_size], y_epoch[start : start + batch_size]
            loss, logits = optimizer_step(model, optimizer, x, y, recipe, amp)
            first_nonfinite = torch.where(
                (first_nonfinite < 0) & ~torch.isfinite(loss.detach()), batch, first_nonfinite
            )
            if batch % check_every == check_every - 1 or batch == batches - 1:
                for k, bad in enumerate(first_nonfinite.tolist()):
                    if bad >= 0 and k not in state.diverged:
                        state.diverged[k] = Diverged(bad + 1, batches)
                if len(state.diverged) == seeds:
                    raise state.diverged[min(state.diverged)]
            if state.per_batch:
                scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(2) == y).sum(0)
            bar.update()
    return [(s / n, 100.0 * c / n) for s, c in zip(loss_sum.tolist(), correct.tolist(), strict=True)]


@torch.inference_mode()
def predict(
    model: nn.Module, x: torch.Tensor, amp: bool = False, batch_size: int = 2000, seeds: int = 1
) -> torch.Tensor:
    """Logits (float32) for normalized images x [N, 1, 28, 28], in large batches: [N, 10],
    or [N, K, 10] from a network of K packed seeds (each sees the same images)."""
    model.eval()
    with autocast(x.device, amp):
        logits = torch.cat(
            [
                model(x[i : i + batch_size].expand(-1, seeds, -1, -1)).float()
                for i in range(0, len(x), batch_size)
            ]
        )
    return logits if seeds == 1 else logits.view(len(x), seeds, -1)


def test(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool = False) -> tuple[float, float]:
    """(mean loss, accuracy %) on a held-out set."""
    return test_seeds(model, x, y, amp, 1)[0]


def test_seeds(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool, seeds: int
) -> list[tuple[float, float]]:
    """Each packed seed's (mean loss, accuracy %) on a held-out set."""
    logits = predict(model, x, amp, seeds=seeds).view(len(x), seeds, -1)
    scores = []
    for k in range(seeds):
        loss = F.cross_entropy(logits[:, k], y).item()
        scores.append((loss, 100.0 * (logits[:, k].argmax(1) == y).float().mean().item()))
    return scores


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


# Seed s's dropout stream is seeded with s + DROPOUT_STREAM: apart from its data generator
# (seeded with s), and from every other seed's, since seeds stop at 2**32 - 1.
DROPOUT_STREAM = 2**32


def new_state(
    step: Step,
    recipe: Recipe,
    data: DeviceData,
    seeds: int | list[int],
    device: torch.device,
    layout: str = "cl",
) -> TrainState:
    """A fresh start for one seed or several trained together (`pack.py`): each seed's
    network is built after seeding torch with it, so it starts from the weights a run of that
    seed alone starts from."""
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    networks = []
    for seed in seeds:
        set_determinism(seed)
        networks.append(step.build())
    model = apply(pack(networks), layout).to(device)
    optimizer = make_optimizer(model, recipe)
    steps_per_epoch = math.ceil(len(data.train_y) / recipe.batch_size)
    scheduler, per_batch = make_scheduler(optimizer, recipe, steps_per_epoch)
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    dropout_generators = [torch.Generator().manual_seed(s + DROPOUT_STREAM) for s in seeds]
    # BatchNorm statistics are averaged with the weights (use_buffers), so the EMA model
    # evaluates without a recalibration pass.
    ema = AveragedModel(model, multi_avg_fn=ema_update(recipe.ema), use_buffers=True) if recipe.ema else None
    return TrainState(
        model,
        optimizer,
        scheduler,
        per_batch,
        seeds,
        generators,
        dropout_generators,
        ema,
        [[] for _ in seeds],
    )


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
    state = state or new_state(step, recipe, data, seed, data.train_y.device, layout)
    if len(state.seeds) != 1:
        raise ValueError("fit trains one seed; fit_seeds trains several together")
    for results, st in fit_seeds(step, data, recipe, amp=amp, state=state):
        if on_epoch:
            on_epoch(results[0], st)
        yield results[0]


def fit_seeds(
    step: Step,
    data: DeviceData,
    recipe: Recipe,
    *,
    seeds: list[int] | None = None,
    amp: bool = False,
    state: TrainState | None = None,
    layout: str = "cl",
) -> Iterator[tuple[list[EpochResult | None], TrainState]]:
    """Train `step`'s network for each of `seeds` at once, packed (`pack.py`; or continue
    `state`), and yield after every epoch each seed's EpochResult (None for a seed that
    diverged) with the state, to checkpoint before the results are recorded."""
    device = data.train_y.device
    if device.type == "cpu":
        keep_freed_memory()
    if state is None:
        state = new_state(step, recipe, data, seeds or [1], device, layout)
    k_seeds = len(state.seeds)
    for epoch in range(state.epochs_done + 1, recipe.epochs + 1):
        t0 = time.perf_counter()
        lr = state.optimizer.param_groups[0]["lr"]
        # Augmentation stops for the last `clean_last` epochs: a small network that can no
        # longer fit the distorted digits gets to fit the real ones while the LR anneals.
        epoch_recipe = (
            recipe if epoch <= recipe.epochs - recipe.clean_last else replace(recipe, augment=aug.Augment())
        )
        try:
            trained = train(state, data, epoch_recipe, amp, desc=f"{step.name} epoch {epoch}/{recipe.epochs}")
        except Diverged as e:  # every seed diverged: the last one says where
            raise Diverged(e.batch, e.batches, epoch) from None
        finally:  # a seed that diverged in this epoch is told which epoch it was
            for k, d in state.diverged.items():
                if d.epoch is None:
                    state.diverged[k] = Diverged(d.batch, d.batches, epoch)
        if state.scheduler is not None and not state.per_batch:
            state.scheduler.step()
        scores = {
            name: test_seeds(state.eval_model, x, y, amp, k_seeds) for name, (x, y) in data.eval_sets.items()
        }
        seconds = time.perf_counter() - t0
        results: list[EpochResult | None] = []
        for k in range(k_seeds):
            if k in state.diverged:
                results.append(None)
                continue
            test_score = scores["test"][k] if "test" in scores else (None, None)
            val_score = scores["val"][k] if "val" in scores else (None, None)
            result = EpochResult(
                epoch,
                lr,
                *trained[k],
                *test_score,
                seconds=seconds,
                val_loss=val_score[0],
                val_acc=val_score[1],
            )
            state.histories[k].append(result)
            results.append(result)
        yield results, state
