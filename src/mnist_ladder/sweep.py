"""`ladder sweep`: an Optuna search over the ladder's model family and recipe.

Trials train on the first 50,000 training images and are scored on the last 10,000 (mean
validation accuracy over the last 3 epochs); the test set is never loaded into a trial. The
study lives in a relational database: a SQLite file by default, PostgreSQL when many workers
on many machines share one study. Workers send a heartbeat; a worker killed mid-trial leaves
a trial that the next worker marks failed and retries with the same parameters.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy.exc
import torch

from . import family
from .augment import SEED_AUGMENT
from .data import MNIST
from .models import count_parameters
from .steps import Recipe
from .train import fit, prepare

LAST = 3


class SweepError(ValueError):
    pass


# name -> (kind, choices or (low, high)); `--fix name=value` pins one
SPACE: dict[str, tuple[str, tuple]] = {
    "n_convs1": ("int", (1, 2)),
    "c1": ("int", (4, 12)),
    "c2": ("int", (8, 20)),
    "transition": ("int", (6, 16)),
    "n_convs2": ("int", (2, 4)),
    "c3": ("int", (8, 20)),
    "c4": ("int", (8, 20)),
    "c5": ("int", (8, 24)),
    "c6": ("int", (8, 24)),
    "head": ("cat", (0, 12, 16, 20)),
    "dropout": ("float", (0.0, 0.1)),
    "lr": ("log", (0.005, 0.2)),
    "scheduler": ("cat", ("onecycle", "step")),
    "batch_size": ("cat", (64, 128, 256)),
    "augment": ("float", (0.0, 1.0)),
}


def parse_fixed(items: list[str]) -> dict:
    fixed = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in SPACE:
            raise SweepError(f"--fix {item!r}: use NAME=VALUE with NAME one of {', '.join(SPACE)}")
        kind, rng = SPACE[name]
        try:
            value = {"int": int, "float": float, "log": float}.get(kind, type(rng[0]))(text)
        except ValueError:
            raise SweepError(f"--fix {item!r}: {text!r} is not a valid {name}") from None
        if kind == "cat" and value not in rng:
            raise SweepError(f"--fix {item!r}: {name} is one of {rng}")
        if kind != "cat" and not rng[0] <= value <= rng[1]:
            raise SweepError(f"--fix {item!r}: {name} lies in [{rng[0]}, {rng[1]}]")
        fixed[name] = value
    return fixed


def suggest(trial: optuna.Trial, fixed: dict) -> dict:
    p = {}
    for name, (kind, rng) in SPACE.items():
        if name in fixed:
            p[name] = fixed[name]
            trial.set_user_attr(f"fixed_{name}", fixed[name])
        elif kind == "int":
            p[name] = trial.suggest_int(name, *rng)
        elif kind == "float":
            p[name] = trial.suggest_float(name, *rng)
        elif kind == "log":
            p[name] = trial.suggest_float(name, *rng, log=True)
        else:
            p[name] = trial.suggest_categorical(name, rng)
    return p


def arch_of(p: dict) -> dict:
    convs = [p["c1"], p["c2"]][: p["n_convs1"]]
    return {"convs1": convs, "transition": p["transition"],
            "convs2": [p["c3"], p["c4"], p["c5"], p["c6"]][: p["n_convs2"]],
            "head": p["head"], "dropout": round(p["dropout"], 4)}


def recipe_of(p: dict, epochs: int) -> Recipe:
    common = {"epochs": epochs, "batch_size": p["batch_size"], "lr": p["lr"],
              "augment": SEED_AUGMENT.scaled(p["augment"])}
    if p["scheduler"] == "onecycle":
        return Recipe(**common, momentum=0.9, scheduler="onecycle", max_lr=p["lr"])
    return Recipe(**common, momentum=0.9, scheduler="step", step_size=max(1, epochs // 3),
                  gamma=0.2)


def smallest_possible(fixed: dict) -> int:
    lo = {n: (fixed.get(n, rng[0] if kind != "cat" else min(rng)))
          for n, (kind, rng) in SPACE.items() if kind in ("int", "cat") and n != "scheduler"}
    lo["head"] = fixed.get("head", 0)
    lo["dropout"] = 0.0
    return count_parameters(family.build(arch_of(lo)))


# ---------------------------------------------------------------- storage and study


def storage(url: str, heartbeat: int = 10) -> optuna.storages.RDBStorage:
    """Workers beat every `heartbeat` s; a trial silent for 3 beats is failed and retried."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=3),
                engine_kwargs={"pool_pre_ping": True, **(
                    {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {})})
        except Exception as e:
            text = str(e)
            # Workers starting together race to create the tables ("already exists", "duplicate
            # key") or find SQLite locked by the other's migration: both pass on a retry.
            racing = ("duplicate key" in text or "already exists" in text or "locked" in text
                      or "no such table" in text
                      or isinstance(e, sqlalchemy.exc.DBAPIError | optuna.exceptions.StorageInternalError))
            if racing and attempt < 4:
                time.sleep(0.5 + attempt)
                continue
            first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
            raise SweepError(f"cannot use storage {redact(url)}: {first}") from None
    raise AssertionError("unreachable")


def redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def default_storage(db: Path) -> str:
    return f"sqlite:///{db.parent / 'sweeps.db'}"


@dataclass
class SweepConfig:
    study: str
    storage_url: str
    trials: int
    epochs: int = 3
    budget: int = 8000
    multi_objective: bool = False
    fixed: dict = dataclasses.field(default_factory=dict)
    train_limit: int | None = None
    eval_limit: int | None = None
    seed: int = 1
    heartbeat: int = 10


def objective_for(cfg: SweepConfig, mnist: MNIST, device: torch.device, amp: bool):
    data = prepare(mnist, device, val=True, train_limit=cfg.train_limit,
                   eval_limit=cfg.eval_limit, test=False)

    def objective(trial: optuna.Trial):
        p = suggest(trial, cfg.fixed)
        arch, recipe = arch_of(p), recipe_of(p, cfg.epochs)
        params = count_parameters(family.build(arch))
        trial.set_user_attr("params", params)
        trial.set_user_attr("arch", arch)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        if params > cfg.budget:
            trial.set_user_attr("rejected", f"{params} parameters > budget {cfg.budget}")
            raise optuna.TrialPruned(f"over budget ({params} > {cfg.budget})")
        step = family.as_step(f"trial-{trial.number}", arch, recipe)
        accs = []
        for r in fit(step, data, recipe, seed=cfg.seed, amp=amp):
            accs.append(r.val_acc)
            if not cfg.multi_objective:
                trial.report(r.val_acc, r.epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {r.epoch}")
        score = statistics.fmean(accs[-LAST:])
        return (params, score) if cfg.multi_objective else score

    return objective


def progress(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
    vals = t.values or []
    score = f"val {vals[-1]:.2f}%" if vals else ""
    print(f"[sweep {study.study_name}] trial {t.number:>3} {t.state.name.lower():<8} "
          f"{t.user_attrs.get('params', '?'):>6} params {score} "
          f"{t.user_attrs.get('rejected', '')}".rstrip(), flush=True)


def run_sweep(cfg: SweepConfig, load_mnist: Callable[[], MNIST], device: torch.device,
              amp: bool) -> optuna.Study:
    """Checks the budget and the storage before loading any data."""
    if smallest_possible(cfg.fixed) > cfg.budget:
        raise SweepError(f"no configuration meets the budget of {cfg.budget} parameters "
                         f"(the smallest in this space has {smallest_possible(cfg.fixed)})")
    store = storage(cfg.storage_url, cfg.heartbeat)
    kw = ({"directions": ["minimize", "maximize"]} if cfg.multi_objective
          else {"direction": "maximize"})
    try:
        study = optuna.create_study(
            storage=store, study_name=cfg.study, load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=None),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1), **kw)
    except ValueError as e:
        raise SweepError(f"study {cfg.study!r}: {e}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(
        objective_for(cfg, load_mnist(), device, amp), n_trials=cfg.trials * 10,
        callbacks=[progress, optuna.study.MaxTrialsCallback(
            cfg.trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))],
        gc_after_trial=False)
    return study


# ---------------------------------------------------------------- report and re-training


def load_study(name: str, url: str) -> optuna.Study:
    store = storage(url)
    try:
        return optuna.load_study(study_name=name, storage=store)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store)]
        raise SweepError(f"no study {name!r} in {redact(url)}"
                         + (f"; studies: {', '.join(names)}" if names else "")) from None


def trial_config(name: str, number: int, url: str) -> tuple[dict, Recipe, dict]:
    study = load_study(name, url)
    trials = [t for t in study.trials if t.number == number]
    if not trials:
        raise SweepError(f"study {name!r} has no trial {number}")
    t = trials[0]
    if t.state != optuna.trial.TrialState.COMPLETE:
        raise SweepError(f"trial {number} of {name!r} is {t.state.name.lower()}, not complete")
    p = {**{k.removeprefix("fixed_"): v for k, v in t.user_attrs.items() if k.startswith("fixed_")},
         **t.params}
    return arch_of(p), recipe_of(p, 15), p


def pareto_front(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    front, best = [], -1.0
    for params, acc in sorted(points):
        if acc > best:
            front.append((params, acc))
            best = acc
    return front


def report(name: str, url: str, out_dir: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    study = load_study(name, url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise SweepError(f"study {name!r} has no complete trial yet")
    def acc(t: optuna.trial.FrozenTrial) -> float:
        return t.values[-1]

    states = {}
    for t in study.trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    lines = [f"# Sweep {name}", "",
             f"Trials: {', '.join(f'{v} {k}' for k, v in sorted(states.items()))}. Objective: mean "
             f"validation accuracy (last {LAST} epochs; first 50,000 train / last 10,000 validation).",
             "", "| trial | params | val acc | architecture | lr | scheduler | batch | augment |",
             "|---|---|---|---|---|---|---|---|"]
    for t in sorted(done, key=acc, reverse=True)[:10]:
        p = t.params
        a = t.user_attrs.get("arch", {})
        lines.append(f"| {t.number} | {t.user_attrs.get('params')} | {acc(t):.2f} | "
                     f"{a.get('convs1')} / {a.get('transition')} / {a.get('convs2')} / head "
                     f"{a.get('head')}, dropout {a.get('dropout')} | {p.get('lr', '-'):.4g} | "
                     f"{p.get('scheduler', '-')} | {p.get('batch_size', '-')} | "
                     f"{p.get('augment', 0):.2f} |")
    out_dir.mkdir(parents=True, exist_ok=True)
    points = [(t.user_attrs["params"], acc(t)) for t in done]
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(*zip(*points, strict=True), s=14, alpha=0.6, label="complete trials")
    ax.plot(*zip(*front, strict=True), "r.-", label="Pareto front")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"sweep {name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plot = out_dir / f"sweep-{name}-pareto.png"
    fig.savefig(plot, dpi=80)
    plt.close(fig)
    lines += ["", f"Pareto front (parameters, val acc): {front}", "", f"![pareto]({plot.name})"]
    if len(done) >= 4 and len(study.directions) == 1:
        try:
            imp = optuna.importance.get_param_importances(study)
            lines += ["", "Parameter importances (fANOVA): " +
                      ", ".join(f"{k} {v:.2f}" for k, v in imp.items())]
        except (RuntimeError, ValueError) as e:
            lines += ["", f"Parameter importances unavailable: {e}"]
    text = "\n".join(lines) + "\n"
    (out_dir / f"sweep-{name}.md").write_text(text)
    return text
