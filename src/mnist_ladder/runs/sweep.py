"""`ladder sweep`: an Optuna search over the ladder's model family and recipe.

Trials train on the first 50,000 training images and are scored on the last 10,000 (mean
validation accuracy over the last 3 epochs); the test set is never loaded into a trial. The
study lives in a relational database: a SQLite file by default, PostgreSQL when many workers
on many machines share one study. Workers send a heartbeat; a worker killed mid-trial leaves
a trial that the next worker marks failed and retries with the same parameters.
"""

from __future__ import annotations

import dataclasses
import importlib.util
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

from ..core.errors import LadderError
from ..core.files import UnsafeName, safe_name, write_atomic
from ..engine import family
from ..engine.augment import SEED_AUGMENT
from ..engine.data import MNIST
from ..engine.models import count_parameters
from ..engine.train import fit, prepare
from ..steps import Recipe
from .results import pareto_front

LAST = 3


class SweepError(LadderError, ValueError):
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
    return {
        "convs1": convs,
        "transition": p["transition"],
        "convs2": [p["c3"], p["c4"], p["c5"], p["c6"]][: p["n_convs2"]],
        "head": p["head"],
        "dropout": round(p["dropout"], 4),
    }


def recipe_of(p: dict, epochs: int) -> Recipe:
    common = {
        "epochs": epochs,
        "batch_size": p["batch_size"],
        "lr": p["lr"],
        "augment": SEED_AUGMENT.scaled(p["augment"]),
    }
    if p["scheduler"] == "onecycle":
        return Recipe(**common, momentum=0.9, scheduler="onecycle", max_lr=p["lr"])
    return Recipe(**common, momentum=0.9, scheduler="step", step_size=max(1, epochs // 3), gamma=0.2)


def smallest_possible(fixed: dict) -> int:
    lo = {
        n: (fixed.get(n, rng[0] if kind != "cat" else min(rng)))
        for n, (kind, rng) in SPACE.items()
        if kind in ("int", "cat") and n != "scheduler"
    }
    lo["head"] = fixed.get("head", 0)
    lo["dropout"] = 0.0
    return count_parameters(family.build(arch_of(lo)))


# ---------------------------------------------------------------- storage and study


def with_installed_driver(url: str) -> str:
    """`postgresql://...` (the spelling PostgreSQL itself documents, and the README's) with
    whichever PostgreSQL driver is installed. SQLAlchemy 2 maps a driverless `postgresql://`
    to psycopg2, but SQLAlchemy 2.1 to psycopg 3: the same URL must work whichever of the two
    a user has, so the driver is named here, psycopg 3 first as SQLAlchemy now prefers it."""
    parsed = sqlalchemy.engine.make_url(url) if "://" in url else None
    if parsed is None or parsed.drivername not in ("postgresql", "postgres"):
        return url
    for driver in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(driver) is not None:
            return parsed.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
    raise SweepError("a postgresql:// storage needs a PostgreSQL driver: pip install -e '.[postgres]'")


def storage(url: str, heartbeat: int = 10) -> optuna.storages.RDBStorage:
    """Workers beat every `heartbeat` s; a trial silent for 3 beats is failed and retried."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = with_installed_driver(url)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
                engine_kwargs={
                    "pool_pre_ping": True,
                    **({"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}),
                },
            )
        except Exception as e:
            text = str(e)
            # Workers starting together race to create the tables ("already exists", "duplicate
            # key") or find SQLite locked by the other's migration: both pass on a retry.
            racing = (
                "duplicate key" in text
                or "already exists" in text
                or "locked" in text
                or "no such table" in text
                or isinstance(e, sqlalchemy.exc.DBAPIError | optuna.exceptions.StorageInternalError)
            )
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
    """A user's studies: `sweeps.db` beside the results store in use (runs/ by default)."""
    return f"sqlite:///{db.parent / 'sweeps.db'}"


def reference_storage() -> str:
    """The project's reference studies, committed with its reference results."""
    from .store import reference_dir

    return f"sqlite:///{reference_dir() / 'sweeps.db'}"


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite:"):
        return None
    database = sqlalchemy.engine.make_url(url).database
    return Path(database) if database and database != ":memory:" else None


# A study's name becomes part of file names (sweep-NAME.md, its plot): one plain name, never
# a path, so that a report cannot be written outside the folder it is asked for.


def check_study_name(name: str) -> str:
    try:  # the one validator of names that become file names (sweep-NAME.md)
        return safe_name(name, "study name")
    except UnsafeName as e:
        raise SweepError(str(e)) from None


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
    data = prepare(
        mnist, device, val=True, train_limit=cfg.train_limit, eval_limit=cfg.eval_limit, test=False
    )

    def objective(trial: optuna.Trial):
        p = suggest(trial, cfg.fixed)
        arch, recipe = arch_of(p), recipe_of(p, cfg.epochs)
        params = count_parameters(family.build(arch))
        trial.set_user_attr("params", params)
        trial.set_user_attr("arch", arch)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("threads", torch.get_num_threads())
        if params > cfg.budget:
            trial.set_user_attr("rejected", f"{params:,} parameters > budget {cfg.budget:,}")
            raise optuna.TrialPruned(f"over budget ({params:,} > {cfg.budget:,})")
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
    params = t.user_attrs.get("params")
    print(
        f"[sweep {study.study_name}] trial {t.number:>3} {t.state.name.lower():<8} "
        f"{f'{params:,}' if params is not None else '?':>6} params {score} "
        f"{t.user_attrs.get('rejected', '')}".rstrip(),
        flush=True,
    )


def with_study_heartbeat(
    study: optuna.Study, url: str, load: Callable[[optuna.storages.RDBStorage], optuna.Study], *, worker: bool
) -> optuna.Study:
    """The study keeps the heartbeat its first worker chose: whoever opens it later (a worker
    with another --heartbeat, `sweep report`) judges staleness by the beat its workers keep,
    and never fails a live worker's trial for beating slower than it expects. Only a worker
    writes it: reading a study changes nothing in it."""
    beat, mine = study.user_attrs.get("heartbeat_s"), study._storage.get_heartbeat_interval()
    if beat is None:
        if worker:
            study.set_user_attr("heartbeat_s", mine)
        return study
    return study if beat == mine else load(storage(url, int(beat)))


def reap_stale_trials(study: optuna.Study) -> None:
    """Fail the trials whose worker died (no heartbeat for the grace period) and queue their
    retries. Optuna does this only when a worker starts a trial, so a study whose last live
    worker had already started its last trial would keep the dead one RUNNING for good:
    every command that opens a study does it too."""
    optuna.storages.fail_stale_trials(study)


def counts(study: optuna.Study) -> dict[str, int]:
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    return states


def done(study: optuna.Study, trials: int) -> bool:
    """`trials` finished (complete or pruned), and no retry of a dead worker's trial waiting."""
    c = counts(study)
    return c.get("complete", 0) + c.get("pruned", 0) >= trials and not c.get("waiting", 0)


def run_sweep(
    cfg: SweepConfig, load_mnist: Callable[[], MNIST], device: torch.device, amp: bool
) -> optuna.Study:
    """Checks the budget and the storage before loading any data."""
    check_study_name(cfg.study)
    if smallest_possible(cfg.fixed) > cfg.budget:
        raise SweepError(
            f"no configuration meets the budget of {cfg.budget} parameters "
            f"(the smallest in this space has {smallest_possible(cfg.fixed)})"
        )
    kw = {"directions": ["minimize", "maximize"]} if cfg.multi_objective else {"direction": "maximize"}

    def create(store: optuna.storages.RDBStorage) -> optuna.Study:
        try:
            return optuna.create_study(
                storage=store,
                study_name=cfg.study,
                load_if_exists=True,
                sampler=optuna.samplers.TPESampler(seed=None),
                pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
                **kw,
            )
        except ValueError as e:
            raise SweepError(f"study {cfg.study!r}: {e}") from None

    study = with_study_heartbeat(
        create(storage(cfg.storage_url, cfg.heartbeat)), cfg.storage_url, create, worker=True
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    reap_stale_trials(study)
    if done(study, cfg.trials):  # a resumed sweep that has nothing left to do trains nothing
        return study

    def stop_when_done(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if done(study, cfg.trials):
            study.stop()

    study.optimize(
        objective_for(cfg, load_mnist(), device, amp),
        n_trials=cfg.trials * 10,
        callbacks=[progress, stop_when_done],
        gc_after_trial=False,
    )
    return study


# ---------------------------------------------------------------- report and re-training


def load_study(name: str, url: str) -> optuna.Study:
    """Opens an existing study (never creating a database) and reaps its dead trials."""
    check_study_name(name)
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise SweepError(f"no study {name!r} in {redact(url)} (no such file)")
    store = storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=store)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store)]
        raise SweepError(
            f"no study {name!r} in {redact(url)}" + (f" (studies: {', '.join(names)})" if names else "")
        ) from None
    study = with_study_heartbeat(
        study, url, lambda s: optuna.load_study(study_name=name, storage=s), worker=False
    )
    reap_stale_trials(study)
    return study


def find_study(name: str, urls: list[str]) -> optuna.Study:
    """The first of `urls` that holds the study (a user's storage, then the reference one)."""
    reasons = []
    for url in urls:
        try:
            return load_study(name, url)
        except SweepError as e:
            if len(urls) == 1 or not str(e).startswith("no study"):
                raise
            reasons.append(str(e).removeprefix(f"no study {name!r} in "))
    raise SweepError(f"no study {name!r} in " + " nor in ".join(reasons))


def params_of(t: optuna.trial.FrozenTrial) -> dict:
    """A trial's full configuration: what was searched and what `--fix` pinned."""
    return {
        **{k.removeprefix("fixed_"): v for k, v in t.user_attrs.items() if k.startswith("fixed_")},
        **t.params,
    }


def trial_config(name: str, number: int, urls: list[str]) -> tuple[dict, Recipe, dict]:
    study = find_study(name, urls)
    trials = [t for t in study.trials if t.number == number]
    if not trials:
        raise SweepError(f"study {name!r} has no trial {number}")
    t = trials[0]
    if t.state != optuna.trial.TrialState.COMPLETE:
        raise SweepError(f"trial {number} of {name!r} is {t.state.name.lower()}, not complete")
    p = params_of(t)
    return arch_of(p), recipe_of(p, 15), p


def report(name: str, urls: list[str], out_dir: Path) -> tuple[str, Path]:
    """The study's page and its Pareto plot, both written into `out_dir` (the page links
    only the plot beside it). Returns (page text, page path)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study = find_study(name, urls)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise SweepError(f"study {name!r} has no complete trial yet")

    def acc(t: optuna.trial.FrozenTrial) -> float:
        return t.values[-1]

    states = counts(study)
    lines = [
        f"# Sweep {name}",
        "",
        f"Trials: {', '.join(f'{v} {k}' for k, v in sorted(states.items()))}. Objective: mean "
        f"validation accuracy (last {LAST} epochs; first 50,000 train / last 10,000 validation).",
    ]
    if states.get("waiting"):
        lines += [
            "",
            f"{states['waiting']} waiting: retries of trials whose worker died; run the "
            "sweep's command again to finish them.",
        ]
    lines += [
        "",
        "| trial | params | val acc (%) | architecture | lr | scheduler | batch | augment |",
        "|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    for t in sorted(done, key=acc, reverse=True)[:10]:
        p, a = params_of(t), t.user_attrs.get("arch", {})
        lines.append(
            f"| {t.number} | {t.user_attrs.get('params', 0):,} | {acc(t):.2f} | "
            f"{a.get('convs1')} / {a.get('transition')} / {a.get('convs2')} / head "
            f"{a.get('head')}, dropout {a.get('dropout', 0):.3f} | {p['lr']:.4g} | "
            f"{p['scheduler']} | {p['batch_size']} | {p['augment']:.2f} |"
        )
    points = [(t.user_attrs["params"], acc(t)) for t in done]
    front = pareto_front(points)
    by_point = {(t.user_attrs["params"], acc(t)): t.number for t in done}
    plot = out_dir / f"sweep-{name}-pareto.png"
    lines += [
        "",
        "Pareto front: the most accurate trial at each size.",
        "",
        "| params | val acc (%) | trial |",
        "|---:|---:|---:|",
        *(f"| {n:,} | {a:.2f} | {by_point[(n, a)]} |" for n, a in front),
        "",
        f"![Pareto front of sweep {name}]({plot.name})",
    ]
    if len(done) >= 4 and len(study.directions) == 1:
        try:
            imp = optuna.importance.get_param_importances(study)
            lines += [
                "",
                "Parameter importances (fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()),
            ]
        except (RuntimeError, ValueError) as e:
            lines += ["", f"Parameter importances unavailable: {e}"]
    text = "\n".join(lines) + "\n"
    page = out_dir / f"sweep-{name}.md"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(*zip(*points, strict=True), s=14, alpha=0.6, label="complete trials")
    ax.plot(*zip(*front, strict=True), "r.-", label="Pareto front")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"sweep {name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_whole(plot, lambda f: fig.savefig(f, dpi=80, format="png"))
        write_whole(page, lambda f: f.write(text.encode()))
    except OSError as e:
        raise SweepError(f"cannot write the report into {out_dir}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return text, page


def write_whole(target: Path, write: Callable) -> None:
    """The file whole or not at all: written aside, then renamed into place."""

    def into(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    write_atomic(target, into, hidden=True)
