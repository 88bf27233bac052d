"""Memory layouts for a step's model, measured on this CPU rather than guessed.

Which layout trains fastest depends on the CPU, the step's channel counts and the precision:
torch's channels-last BatchNorm backward is many times slower than its NCHW one on some
CPUs, its NCHW max-pool several times slower than its channels-last one on others. So,
like cuDNN's benchmark mode, `choose` times a few training steps of the step's own model in
each layout of `LAYOUTS`, keeps the fastest, and caches the choice per CPU, step, batch,
precision, thread count and version of the layers' code in the user's cache folder, so the
probe runs once.

The probe trains fresh copies of the model with optimizers of their own, inside
`torch.random.fork_rng`: a run's random numbers, weights, BatchNorm statistics and optimizer
state are the same whether or not it ran. Layouts change speed only: every layout computes
the same function with the same dropout masks, so results agree up to floating-point noise.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .data import machine_cache_dir
from .models import BatchNormNCHW, MaxPool2d, MaxPoolCL
from .steps import Recipe, Step
from .train import (
    ConfigError,
    DeviceData,
    keep_freed_memory,
    make_optimizer,
    normalize,
    optimizer_step,
    to_unit,
)


@dataclass(frozen=True)
class Layout:
    channels_last: bool  # the convolutions' weights, hence their outputs
    batchnorm_nchw: bool = False  # BatchNorm on an NCHW copy (`BatchNormNCHW`)
    pool_channels_last: bool = False  # max-pool on a channels-last copy (`MaxPoolCL`)


LAYOUTS = {
    "cl": Layout(channels_last=True),
    "cl+bn-nchw": Layout(channels_last=True, batchnorm_nchw=True),
    "nchw": Layout(channels_last=False),
    "nchw+pool-cl": Layout(channels_last=False, pool_channels_last=True),
}
CHOICES = ("auto", *LAYOUTS)
DEFAULT = "cl"  # what the ladder used before layouts were measured; the choice on CUDA
MARGIN = 0.05  # another layout replaces the default only when this much faster: the probe is
# short, and on a shared machine noise alone should not flip the layout


def check(name: str) -> str:
    if name not in CHOICES:
        raise ConfigError(f"unknown layout {name!r}; use {', '.join(CHOICES)}")
    return name


def apply(model: nn.Module, name: str) -> nn.Module:
    """`model` in layout `name`, in place. Modules are swapped for subclasses that hold the
    same parameters and buffers, so state_dicts load either way."""
    layout = LAYOUTS[check(name) if name != "auto" else DEFAULT]
    for module in model.modules():
        if layout.batchnorm_nchw and type(module) is nn.BatchNorm2d:
            module.__class__ = BatchNormNCHW
        if type(module) is nn.MaxPool2d:
            module.__class__ = MaxPoolCL if layout.pool_channels_last else MaxPool2d
    fmt = torch.channels_last if layout.channels_last else torch.contiguous_format
    return model.to(memory_format=fmt)


# ---------------------------------------------------------------- the probe


def measure(step: Step, recipe: Recipe, device: torch.device, amp: bool, data: DeviceData,
            *, rounds: int = 5, steps_per_round: int = 4) -> dict[str, float]:
    """Milliseconds per training step of `step`'s model in each layout: the median over
    `rounds` rounds, each timing every layout in turn (neighbours in time share the machine's
    load), after one round of warm-up. Real images, unaugmented: the model's work alone."""
    if device.type == "cpu":
        keep_freed_memory()  # as in the run it measures for
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = normalize(to_unit(data.train_x[:recipe.batch_size]))
        y = data.train_y[:recipe.batch_size]
        model = step.build().to(device)
        runs = {}
        for name in LAYOUTS:
            copy_ = apply(copy.deepcopy(model), name)
            runs[name] = (copy_.train(), make_optimizer(copy_, recipe))
        times: dict[str, list[float]] = {name: [] for name in LAYOUTS}
        for _ in range(rounds + 1):
            for name, (m, opt) in runs.items():
                t = time.perf_counter()
                for _ in range(steps_per_round):
                    optimizer_step(m, opt, x, y, recipe, amp)
                times[name].append((time.perf_counter() - t) / steps_per_round * 1e3)
    return {name: statistics.median(ts[1:]) for name, ts in times.items()}


def choose(step: Step, recipe: Recipe, device: torch.device, amp: bool, data: DeviceData,
           log: Callable[[str], None] | None = None) -> str:
    """The fastest layout for this step on this machine: from the cache, or measured and
    cached. CUDA keeps channels-last (cuDNN picks its own algorithms)."""
    if device.type != "cpu":
        return DEFAULT
    say = log or (lambda s: print(f"[layout] {s}", file=sys.stderr, flush=True))
    key = cache_key(step, recipe, amp)
    cached = read_cache()
    if key in cached and cached[key].get("layout") in LAYOUTS:
        return cached[key]["layout"]
    ms = measure(step, recipe, device, amp, data)
    best = min(ms, key=ms.__getitem__)
    if ms[best] > (1 - MARGIN) * ms[DEFAULT]:
        best = DEFAULT
    say(f"{step.name}: " + ", ".join(f"{n} {t:.1f} ms" for n, t in ms.items())
        + f" a step; using {best}")
    write_cache(key, {"layout": best, "ms_per_step": {n: round(t, 2) for n, t in ms.items()},
                      "measured": time.strftime("%Y-%m-%d %H:%M:%S")}, say)
    return best


def resolve(name: str, step: Step, recipe: Recipe, device: torch.device, amp: bool,
            data: DeviceData) -> str:
    """`--layout`'s value as a layout: a named one as is, `auto` measured (or cached)."""
    return choose(step, recipe, device, amp, data) if check(name) == "auto" else name


# ---------------------------------------------------------------- the cache


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# The package's files whose speed the probe measures: a choice measured with other versions
# of them (an older checkout sharing the cache, as `benchmarks/speed.py --versus` runs one)
# is not this code's. (kernels.c's layers run only in channels-last: a choice made before them
# kept Step 13 in NCHW, 0.72x the speed.)
SPEED_SOURCES = ("kernels.c", "fused.py", "models.py", "layout.py")


@functools.cache
def code_version() -> str:
    package = Path(__file__).parent
    h = hashlib.sha256()
    for name in SPEED_SOURCES:
        path = package / name
        h.update(path.read_bytes() if path.exists() else b"")
    return h.hexdigest()[:12]


def cache_key(step: Step, recipe: Recipe, amp: bool) -> str:
    """What the fastest layout depends on. The model name alone ("AMD EPYC") can hide the
    vector width, hence torch's CPU capability; torch's version and ours, as kernels change."""
    return "|".join([cpu_name(), torch.backends.cpu.get_cpu_capability(),
                     f"{torch.get_num_threads()} threads", f"torch {torch.__version__}",
                     f"code {code_version()}", step.name, f"batch {recipe.batch_size}",
                     "bf16" if amp else "fp32"])


def cache_path() -> Path:
    return machine_cache_dir() / "layouts.json"


def read_cache() -> dict:
    try:
        cached = json.loads(cache_path().read_text())
    except (OSError, ValueError):  # none yet, or unreadable: measure again
        return {}
    return cached if isinstance(cached, dict) else {}


def write_cache(key: str, entry: dict, say: Callable[[str], None]) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**read_cache(), key: entry}, indent=1, sort_keys=True))
        os.replace(tmp, path)  # atomic: concurrent runs each leave a whole file
    except OSError as e:  # a read-only cache costs a probe per run, nothing more
        say(f"could not cache the choice in {path}: {e}")
