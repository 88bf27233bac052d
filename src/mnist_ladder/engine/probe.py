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
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..core.files import write_atomic
from .data import machine_cache_dir
from .layouts import DEFAULT, LAYOUTS, apply, check
from .step import Recipe, Step
from .train import (
    DeviceData,
    keep_freed_memory,
    make_optimizer,
    normalize,
    optimizer_step,
    to_unit,
)

MARGIN = 0.05  # another layout replaces the default only when this much faster: the probe is
# short, and on a shared machine noise alone should not flip the layout


# ---------------------------------------------------------------- the probe


def measure(
    step: Step,
    recipe: Recipe,
    device: torch.device,
    amp: bool,
    data: DeviceData,
    *,
    rounds: int = 5,
    steps_per_round: int = 4,
) -> dict[str, float]:
    """Milliseconds per training step of `step`'s model in each layout: the median over
    `rounds` rounds, each timing every layout in turn (neighbours in time share the machine's
    load), after one round of warm-up. Real images, unaugmented: the model's work alone."""
    if device.type == "cpu":
        keep_freed_memory()  # as in the run it measures for
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = normalize(to_unit(data.train_x[: recipe.batch_size]))
        y = data.train_y[: recipe.batch_size].unsqueeze(1)  # one seed
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


def choose(
    step: Step,
    recipe: Recipe,
    device: torch.device,
    amp: bool,
    data: DeviceData,
    *,
    identity: str,
    log: Callable[[str], None] | None = None,
) -> str:
    """The fastest layout for this step on this machine: from the cache, or measured and
    cached. CUDA keeps channels-last (cuDNN picks its own algorithms)."""
    if device.type != "cpu":
        return DEFAULT
    say = log or (lambda s: print(f"[layout] {s}", file=sys.stderr, flush=True))
    key = cache_key(identity)
    cached = read_cache()
    if key in cached and cached[key].get("layout") in LAYOUTS:
        return cached[key]["layout"]
    ms = measure(step, recipe, device, amp, data)
    best = min(ms, key=ms.__getitem__)
    if ms[best] > (1 - MARGIN) * ms[DEFAULT]:
        best = DEFAULT
    say(f"{step.name}: " + ", ".join(f"{n} {t:.1f} ms" for n, t in ms.items()) + f" a step; using {best}")
    write_cache(
        key,
        {
            "layout": best,
            "ms_per_step": {n: round(t, 2) for n, t in ms.items()},
            "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        say,
    )
    return best


def resolve(
    name: str, step: Step, recipe: Recipe, device: torch.device, amp: bool, data: DeviceData, *, identity: str
) -> str:
    """`--layout`'s value as a layout: a named one as is, `auto` measured (or cached) for the
    run's training identity (`runs/identity.py`)."""
    if check(name) != "auto":
        return name
    return choose(step, recipe, device, amp, data, identity=identity)


# ---------------------------------------------------------------- the cache


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cache_key(identity: str) -> str:
    """What the fastest layout depends on: the machine (the model name alone, "AMD EPYC", can
    hide the vector width, hence torch's CPU capability; the thread count) and the run's
    training identity, which covers the engine's sources and kernels, the step's network, the
    recipe (its batch size), the precision and torch's version. An older checkout sharing the
    cache (`benchmarks/speed.py --versus`) has another identity, so never reads this choice."""
    return "|".join(
        [
            cpu_name(),
            torch.backends.cpu.get_cpu_capability(),
            f"{torch.get_num_threads()} threads",
            f"identity {identity}",
        ]
    )


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
    try:  # atomic: concurrent runs each leave a whole file
        write_atomic(
            path,
            json.dumps({**read_cache(), key: entry}, indent=1, sort_keys=True),
            make_parent=True,
            hidden=True,
        )
    except OSError as e:  # a read-only cache costs a probe per run, nothing more
        say(f"could not cache the choice in {path}: {e}")
