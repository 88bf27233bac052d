"""`ladder ...`: the command line. Every bad input is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import steps
from ..core.errors import ConfigError, LadderError
from ..core.files import safe_name
from ..core.version import __version__
from ..engine import data
from ..engine.models import count_parameters
from ..runs.catalog import Catalog, StepFileError, catalog
from ..runs.experiment import MAX_SEED, RunOptions, make_spec
from ..runs.store import (
    RunRow,
    Store,
    StoreError,
    Stores,
    chosen_db_path,
    default_db_path,
    reference_db_path,
    reference_write_db_path,
)
from ..runs.sweep import SweepError
from ..views.comparison import CompareError
from ..views.summary import summary_table


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:  # every command's --help shows its defaults
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def layout_choices() -> tuple[str, ...]:
    from ..engine.layouts import CHOICES

    return CHOICES


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {v}")
    return v


def thread_count(text: str) -> int:
    """At most the machine's CPUs: more threads than cores only contend (issue #16 reports
    999 threads turning a 0.1 s epoch into 305 s)."""
    v = positive_int(text)
    cpus = os.cpu_count() or 1
    if v > cpus:
        raise argparse.ArgumentTypeError(f"{v} threads: this machine has {cpus} CPU(s)")
    return v


def seed_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= v <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is 0 or more, at most {MAX_SEED:,}; got {v}")
    return v


# ---------------------------------------------------------------- stores and steps


def ladder_of(a: argparse.Namespace) -> Catalog:
    """The built-in steps and the user's (--steps-dir, $MNIST_LADDER_STEPS or ./steps)."""
    return catalog(getattr(a, "steps_dir", None))


def write_db(a: argparse.Namespace) -> Path:
    """The store a command writes: the user's working store unless told otherwise; the
    reference results only when asked for by name (--reference, or --db naming them)."""
    if getattr(a, "reference", False):
        return reference_write_db_path()
    return Path(a.db) if a.db else default_db_path()


def read_dbs(a: argparse.Namespace) -> list[Path]:
    """The stores a command reads: the user's, then the reference results (so a step of the
    user's is compared with ours without re-running ours); --reference: ours alone."""
    if getattr(a, "reference", False):
        return [reference_db_path()]
    mine = chosen_db_path(a.db)
    same = mine.resolve() == reference_db_path().resolve()  # --db naming the reference itself
    return [mine] if same else [mine, reference_db_path()]


def open_stores(a: argparse.Namespace, needed: bool = True) -> Stores:
    """The stores a command reads; `needed=False`: none is fine (a model file named by path)."""
    paths = read_dbs(a)
    stores = Stores(paths)
    if needed and not stores.stores:
        raise StoreError(
            "no results store at "
            + " or ".join(str(p) for p in paths)
            + " (run a step first: `ladder run step6`)"
        )
    return stores


def study_name(text: str) -> str:
    from ..runs.sweep import check_study_name

    try:
        return check_study_name(text)
    except SweepError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def trial_ref(text: str) -> tuple[str, int]:
    """STUDY:N -> (study, trial number)."""
    name, _, number = text.rpartition(":")
    if not name or not number.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: use STUDY:TRIAL_NUMBER")
    return study_name(name), int(number)


# ---------------------------------------------------------------- commands


def cmd_data(a: argparse.Namespace) -> int:
    cache = data.fetch(a.data_dir, a.idx_dir)
    print(f"MNIST verified in {cache}")
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    ladder = ladder_of(a)
    width = max(len(s.name) for s in ladder)
    print(f"{'step':<{width}}  {'parameters':>10}  what it changes")
    for s in ladder:
        mine = f"  [{Path(s.source_file).name}]" if s.source_file else ""
        print(f"{s.name:<{width}}  {s.params:>10,}  {s.title}{mine}")
        if a.all:
            for v in s.tried:
                print(f"{'':<{width}}    .{v.name} ({ladder.get(f'{s.name}.{v.name}').params:,}): {v.change}")
    if not a.all and any(s.tried for s in ladder):
        print(f"({sum(len(s.tried) for s in ladder)} variants tried on the way: `ladder list --all`)")
    return 0


def cmd_summary(a: argparse.Namespace) -> int:
    step = ladder_of(a).get(a.step)
    print(f"{step.name}: {step.title}")
    print(summary_table(step.build()))
    return 0


def run_options(a: argparse.Namespace) -> RunOptions:
    return RunOptions.pick(
        a.device,
        a.precision,
        layout=a.layout,
        out_dir=str(a.out),
        threads=a.threads,
        data_dir=a.data_dir and str(a.data_dir),
        idx_dir=a.idx_dir and str(a.idx_dir),
    )


def cmd_run(a: argparse.Namespace) -> int:
    from ..engine.pack import check_group, unpackable
    from ..runs.experiment import Spec, resolve_step, resume_target, run
    from ..runs.results import group_verdict, headline_key, reference_set, verdict_line

    if a.seeds is not None and a.seed is not None:
        raise ConfigError("give --seed or --seeds, not both")
    seeds = a.seeds or [1 if a.seed is None else a.seed]
    if a.seeds is not None and (a.resume or a.from_trial):
        raise ConfigError("--seeds starts new runs; --resume continues a run's whole group as it was")
    options = run_options(a)
    device, amp = torch.device(options.device), options.amp
    if a.threads:
        torch.set_num_threads(a.threads)
    # A bad step name or file is reported before anything (the store included) is created.
    named = ladder_of(a).get(a.step) if a.step and not (a.resume or a.from_trial) else None
    with Store(write_db(a)) as store:
        resume = None
        if a.resume:
            resume, specs = resume_target(store, a.resume)
            step = resolve_step(specs[0])
        elif a.from_trial:
            from ..runs import sweep

            name, number = a.from_trial
            arch, recipe, _ = sweep.trial_config(name, number, study_storages(a))
            recipe = dataclasses.replace(
                recipe, epochs=a.epochs or recipe.epochs, batch_size=a.batch_size or recipe.batch_size
            )
            specs = [
                Spec(f"trial-{name}-{number}", seeds[0], recipe, a.val, a.train_limit, a.eval_limit, arch)
            ]
            step = resolve_step(specs[0])
        else:
            step = named
            specs = [
                make_spec(
                    step,
                    seed,
                    epochs=a.epochs,
                    batch_size=a.batch_size,
                    val=a.val or a.val_only,
                    train_limit=a.train_limit,
                    eval_limit=a.eval_limit,
                    test=not a.val_only,
                )
                for seed in seeds
            ]
        model = step.build()
        if len(specs) > 1:
            check_group(model, len(specs), specs[0].recipe.batch_size, device)
        print(
            f"{step.name}: {step.title}  ({count_parameters(model):,} parameters, "
            f"device {device}, {'bf16 autocast' if amp else 'fp32'}"
            + (f", CPU threads: {torch.get_num_threads()})" if device.type == "cpu" else ")")
            + f"; results go to {store.path}"
        )
        print(summary_table(model))
        groups = [specs]
        if len(specs) > 1 and (why := unpackable(model)) is not None:
            print(f"seeds {[s.seed for s in specs]} run one after another: {why}")
            groups = [[s] for s in specs]
        elif len(specs) > 1:
            print(f"seeds {[s.seed for s in specs]} trained together, packed into one network")
        rows = []
        for group in groups:
            rows += run(group, store, options, resume=resume, step=step)
        runs = [(row, store.epochs(row.id)) for row in rows]
    reference = None
    for row, hist in runs:
        key = headline_key(row.protocol)
        if row.status != "finished":
            print(f"run {row.id}: {row.status} ({row.note})")
            continue
        best = max(h[key] for h in hist)
        print(
            f"run {row.id}: seed {row.seed}, best {key[:-4]} {best:.2f}%, final {hist[-1][key]:.2f}%, "
            f"{row.wall_seconds:.0f}s -> {row.run_dir}"
        )
        if reference is None and reference_db_path().is_file():  # this step's, else its base's
            with Store(reference_db_path(), create=False) as ref:
                for candidate in filter(None, (step, step.builds_on and ladder_of(a).get(step.builds_on))):
                    reference = reference_set(ref, candidate, row)
                    if reference:
                        break
        if len(runs) == 1:
            print(verdict_line(row, hist, reference))
    if finished := [(row, hist) for row, hist in runs if row.status == "finished" and len(runs) > 1]:
        print(group_verdict(finished, reference))
    return 0


MAX_SEED_COUNT = 1000  # `--seeds 5` means seeds 1-5; a count is not a seed


def parse_seeds(text: str) -> list[int]:
    """'5' -> seeds 1..5; '1,2,7' -> those seeds."""
    try:
        if "," not in text:
            n = int(text)
            if not 0 < n <= MAX_SEED_COUNT:
                raise argparse.ArgumentTypeError(f"{text!r}: a count of seeds is 1 to {MAX_SEED_COUNT}")
            return list(range(1, n + 1))
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a count (5) or a list (1,2,3)") from None
    if any(not 0 <= s <= MAX_SEED for s in seeds):
        raise argparse.ArgumentTypeError(f"seeds are 0 to {MAX_SEED:,}")
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r}: no seed in it")
    if len(set(seeds)) != len(seeds):
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        raise argparse.ArgumentTypeError(f"{text!r}: seed {twice[0]} given twice")
    return seeds


def parse_steps(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def cmd_ladder(a: argparse.Namespace) -> int:
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from ..runs.experiment import Task, made_by_other_code, run_tasks

    options = run_options(a)
    device = torch.device(options.device)
    ladder = ladder_of(a)
    chosen = [ladder.get(name) for name in (a.steps or list(ladder.steps))]
    data.fetch(a.data_dir, a.idx_dir)  # once, before any worker needs it
    db = str(write_db(a))
    Store(db).close()
    threads = a.threads or (max(1, (os.cpu_count() or 1) // a.jobs) if device.type == "cpu" else 1)
    options = dataclasses.replace(options, threads=threads)
    tasks = [
        Task(
            make_spec(
                step,
                seed,
                val=a.val or a.val_only,
                epochs=a.epochs,
                train_limit=a.train_limit,
                eval_limit=a.eval_limit,
                test=not a.val_only,
            ),
            db,
            options,
        )
        for seed in a.seeds
        for step in chosen
    ]
    a.steps = [s.name for s in chosen]
    print(f"{len(tasks)} runs: steps {', '.join(a.steps)} x seeds {a.seeds}; {a.jobs} job(s)")
    with Store(db) as store:
        rerun = [(t, row) for t in tasks if (row := made_by_other_code(t, store))]
    if rerun:  # said up front: a changed source file (any) re-runs them, which can take hours
        print(
            f"{len(rerun)} of them finished before with other code (their training identity "
            "differs: the engine, the step's network or recipe, the precision or torch), and "
            "run again: " + ", ".join(f"{t.spec.step} seed {t.spec.seed} ({row.id})" for t, row in rerun)
        )
    # A step's seeds train together, packed into one network, in one process (`pack.py`).
    by_step = [[t for t in tasks if t.spec.step == s.name] for s in chosen]
    if a.jobs == 1:
        for group in by_step:
            for run_id, what in run_tasks(group):
                print(f"{run_id}: {what}", flush=True)
    else:
        with ProcessPoolExecutor(a.jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_tasks, group) for group in by_step]
            for f in as_completed(futures):
                for run_id, what in f.result():
                    print(f"{run_id}: {what}", flush=True)
    if a.report:
        return cmd_report(a)
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from ..views.report import write_report

    dbs = read_dbs(a)
    if a.report_path:
        out = a.report_path
    elif getattr(a, "reference", False) or dbs[0].resolve() == reference_db_path().resolve():
        # the reference store's report is the committed one, beside results/ in the checkout
        out = reference_write_db_path().parent.parent / "REPORT.md"
    else:
        out = dbs[0].parent / "REPORT.md"  # the user's report, beside the user's store
    try:
        mnist = data.load(a.data_dir, a.idx_dir)
        test = (mnist.test_images, mnist.test_labels)
    except data.DataError as e:
        print(f"ladder: MNIST unavailable, figures of models skipped ({e})", file=sys.stderr)
        test = None
    out, skipped = write_report(dbs, out, test, ladder_of(a))
    print(
        f"wrote {out} and {out.parent / 'report'}/ from "
        + " + ".join(str(p) for p in dbs if p.is_file())
        + (f" ({len(skipped)} item(s) skipped, listed at its end)" if skipped else "")
    )
    return 0


def cmd_predict(a: argparse.Namespace) -> int:

    from ..runs.experiment import load_model
    from .predict import expand, predict_files, resolve_run, save_seen, writable_folder

    if a.show:
        writable_folder(a.show)
    with open_stores(a, needed=not Path(a.run).exists()) as stores:
        model, step_name = load_model(resolve_run(a.run, stores, say=_say))
    files, notes = expand(a.images)
    preds, problems = predict_files(model, files)
    if a.json:
        print(
            json.dumps(
                {
                    "model": step_name,
                    "predictions": [p.to_dict() for p in preds],
                    "skipped": notes,
                    "errors": problems,
                },
                indent=1,
            )
        )
    else:
        for p in preds:
            probs = " ".join(f"{d}:{q:.3f}" for d, q in enumerate(p.probabilities))
            print(f"{p.path}: {p.digit}  (p={max(p.probabilities):.3f})  [{probs}]")
        for n in notes:
            print(n, file=sys.stderr)
    for e in problems:
        print(f"ladder: error: {e}", file=sys.stderr)
    if a.show:
        taken: set[str] = set()
        for p in preds:
            print(f"model input for {p.path} -> {save_seen(p, a.show, taken)}", file=sys.stderr)
    if not preds and not problems:
        print("ladder: error: no images given", file=sys.stderr)
        return 2
    return 1 if problems else 0


def cmd_export(a: argparse.Namespace) -> int:
    from ..runs.experiment import load_model
    from .export import export
    from .predict import resolve_run

    with open_stores(a, needed=not Path(a.run).exists()) as stores:
        weights = resolve_run(a.run, stores, say=_say)
    model, step_name = load_model(weights)
    suffix = ".onnx" if a.format == "onnx" else ".pt"
    out = a.out or weights.with_name(safe_name(step_name, "the model file's step") + suffix)
    export(model, a.format, out)
    print(f"wrote {out} ({a.format}: input 'images' [N, 1, 28, 28] in [0, 1], output logits [N, 10])")
    return 0


def study_storages(a: argparse.Namespace) -> list[str]:
    """Where to look for an existing study: --storage alone if given, else the user's own
    sweeps.db (beside the results store), then the project's reference studies."""
    from ..runs import sweep

    if a.storage:
        return [a.storage]
    return [sweep.default_storage(Path(a.db or default_db_path())), sweep.reference_storage()]


def cmd_sweep(a: argparse.Namespace) -> int:
    from ..runs import sweep

    url = a.storage or sweep.default_storage(write_db(a))
    if a.what:
        if a.what[0] != "report" or len(a.what) != 2:
            raise sweep.SweepError("use `ladder sweep --study NAME ...` or `ladder sweep report NAME`")
        text, page = sweep.report(a.what[1], study_storages(a), a.out)
        print(text)
        print(f"(also in {page}, with its plot beside it)")
        return 0
    if not a.study:
        raise sweep.SweepError("--study NAME is required")
    if a.threads:
        torch.set_num_threads(a.threads)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    cfg = sweep.SweepConfig(
        a.study,
        url,
        a.trials,
        a.epochs,
        a.budget,
        a.multi_objective,
        sweep.parse_fixed(a.fix),
        a.train_limit,
        a.eval_limit,
        heartbeat=a.heartbeat,
    )
    options = RunOptions.pick(a.device, a.precision)
    study = sweep.run_sweep(
        cfg, lambda: data.load(a.data_dir, a.idx_dir), torch.device(options.device), options.amp
    )
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    print(
        f"study {a.study}: {len(study.trials)} trials, {len(done)} complete"
        + (
            f"; best value {study.best_value:.2f}% (trial {study.best_trial.number}, "
            f"{study.best_trial.user_attrs['params']:,} params)"
            if done and not a.multi_objective
            else ""
        )
    )
    return 0


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def cmd_runs(a: argparse.Namespace) -> int:
    db = reference_db_path() if a.reference else chosen_db_path(a.db)
    if not db.is_file():
        ref = reference_db_path()
        hint = (
            (f" ({len(Store(ref, create=False).runs())} reference runs: `ladder runs --reference`)")
            if ref.is_file() and not a.reference
            else ""
        )
        print(f"no runs in {db} yet{hint}")
        return 0
    with Store(db, create=False) as store:
        rows = sorted(store.runs(a.step), key=lambda r: (r.started, r.id), reverse=True)
        total = len(rows)
        rows = rows[: a.limit] if a.limit else rows
        if not rows:
            print(f"no runs{f' of {a.step}' if a.step else ''} in {db}")
            return 0
        width = max(len(r.id) for r in rows)
        print(
            f"{'run':<{width}}  {'started (UTC)':<19}  {'status':<11}  {'protocol':<22}  "
            f"{'epochs':>6}  {'final':>11}  {'parameters':>10}"
        )
        for r in rows:
            hist = store.epochs(r.id)
            key = "val_acc" if r.protocol.startswith("val-only") else "test_acc"
            final = f"{key[:-4]} {hist[-1][key]:.2f}" if hist and hist[-1][key] is not None else "-"
            print(
                f"{r.id:<{width}}  {r.started[:19].replace('T', ' '):<19}  "
                f"{r.effective_status:<11}  {r.protocol:<22}  "
                f"{len(hist):>3}/{r.recipe['epochs']:<2}  {final:>11}  {r.params:>10,}"
            )
        if len(rows) < total:
            print(f"({total - len(rows)} older run(s) not shown: --limit)")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    """`ladder evaluate RUN|STEP --suite corrupted`: each finished run's accuracy under the
    corrupted set, from its stored weights, into the store that holds the run."""
    from ..runs import corrupted
    from ..runs.results import headline_key

    path = write_db(a)
    if not path.is_file():
        raise StoreError(f"no results store at {path}")
    mnist = data.load(a.data_dir, a.idx_dir)
    with Store(path) as store:
        ladder = ladder_of(a)
        if looks_like_step(a.target, ladder):
            name = ladder.get(a.target).name
            rows = [r for r in store.runs(name) if r.status == "finished"]
            if not rows:
                raise StoreError(f"{name} has no finished runs in {path}")
        else:
            rows = [store.run(a.target)]
        measured = 0
        for row in rows:
            if store.robustness(row.id, a.suite) and not a.again:
                print(f"{row.id}: already measured (--again measures it again)")
                continue
            t = time.perf_counter()
            scores = corrupted.measure(row, store, mnist)
            if isinstance(scores, str):
                print(f"{row.id}: {scores}")
                continue
            split = corrupted.split_of(row)
            store.put_robustness(row.id, a.suite, split, scores, corrupted.eval_limit(row.protocol) or 10_000)
            measured += 1
            print(
                f"{row.id}: corrupted {split} mean {corrupted.mean_accuracy(scores):.2f}% "
                f"(clean {store.epochs(row.id)[-1][headline_key(row.protocol)]:.2f}%), "
                f"{time.perf_counter() - t:.1f}s"
            )
    print(f"{measured} run(s) measured into {path}")
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    from ..engine.train import EpochResult
    from ..runs.experiment import epoch_line
    from ..steps import Recipe
    from .predict import writable_folder

    if a.figures:
        writable_folder(a.figures)  # checked before any work
    with open_stores(a) as stores:
        r = stores.run(a.run)
        print(
            f"run {r.id}  step {r.step}  seed {r.seed}  protocol {r.protocol}  "
            f"status {r.effective_status}  (in {stores.origin(r.id)})"
        )
        print(
            f"params {r.params:,}  device {r.device}  amp {bool(r.amp)}  torch {r.torch_version}"
            f"  code {r.code_hash}  git {r.git_commit or '-'}{' (dirty)' if r.git_dirty else ''}"
        )
        if r.source_file:
            print(f"step file {r.source_file}  source hash {r.source_hash}")
        print(
            f"started {r.started}  finished {r.finished or '-'}  wall "
            f"{r.wall_seconds or 0:.0f}s  folder {r.run_dir}"
        )
        print("recipe:")
        recipe = Recipe.from_dict(r.recipe)
        for f in dataclasses.fields(recipe):
            value = getattr(recipe, f.name)
            if dataclasses.is_dataclass(value):
                value = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(value).items())
            print(f"  {f.name:<20} {value}")
        for h in stores.epochs(r.id):
            h.pop("run_id")
            print(epoch_line(EpochResult(**h), r.recipe["epochs"]))
        if a.figures:
            show_figures(a, r.id, stores)
    return 0


def show_figures(a: argparse.Namespace, run: str, stores: Stores) -> None:
    """`ladder show RUN --figures DIR`: what the run's final model sees (insight.py), on the
    MNIST test set, as the report draws it."""
    from ..engine.train import normalize, predict, to_unit
    from ..runs.experiment import load_model
    from ..views import insight
    from .predict import resolve_run

    model, _ = load_model(resolve_run(run, stores))
    mnist = data.load(a.data_dir, a.idx_dir)
    pred = predict(model, normalize(to_unit(mnist.test_images))).argmax(1)
    for name, path in insight.write_figures(
        model, mnist.test_images, mnist.test_labels, pred, a.figures
    ).items():
        print(f"{name}: {path}")


def cmd_new(a: argparse.Namespace) -> int:
    from .starter import starter_file

    ladder = ladder_of(a)
    parent = ladder.get(a.from_step)
    if a.name in ladder.steps:
        raise StepFileError(f"a step named {a.name!r} exists already; choose another name")
    out = a.out or (a.steps_dir or Path("steps")) / f"{a.name}.py"
    if out.exists():
        raise StepFileError(f"{out} exists already; not overwritten")
    text = starter_file(a.name, parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    try:
        from ..runs.catalog import load_file

        load_file(out)
    except StepFileError:
        out.unlink()
        raise
    print(
        f"wrote {out}: {a.name}, a copy of {parent.name} to edit. Then: "
        f"`ladder run {out} --seed 1`, and `ladder compare {parent.name} {a.name}`"
    )
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from ..runs.results import main_set, run_sets, with_robustness
    from ..views import comparison

    ladder = ladder_of(a)

    def runs_side(name: str, rows: list[RunRow], stores: Stores) -> comparison.Side:
        """Runs named by their id or their group: their seeds, as a step's would be."""
        row = rows[0]
        step = ladder.get(row.step) if looks_like_step(row.step, ladder) else None
        side = comparison.Side(
            name,
            row.params,
            steps.Recipe.from_dict(row.recipe),
            row.protocol,
            {r.seed: stores.epochs(r.id) for r in rows},
            step.build() if step else None,
        )
        return with_robustness(side, {r.seed: r.id for r in rows}, stores)

    def step_side(name: str, stores: Stores) -> comparison.Side:
        step = ladder.get(name)
        found = main_set(run_sets(stores, step))
        if found is None:
            raise CompareError(
                f"{step.name} has no finished runs in "
                + " or ".join(str(s.path) for s in stores.stores)
                + f"; start some: `ladder ladder --steps {name} --seeds 3`"
            )
        return found.side(name, stores)

    with open_stores(a) as stores:
        sides = []
        for name in (a.a, a.b):
            step_name, at, where = name.partition("@")
            if at:  # STEP@STORE: that step's runs in that store only ('reference': the project's)
                path = reference_db_path() if where == "reference" else Path(where)
                if not path.is_file():
                    raise CompareError(f"{name}: no results store at {path}")
                with Stores([path]) as one:
                    sides.append(step_side(step_name, one))
            elif looks_like_step(name, ladder):
                sides.append(step_side(name, stores))
            elif group := [r for r in stores.group(name) if r.status == "finished"]:
                sides.append(runs_side(name, group, stores))  # a run group: its finished seeds
            else:
                sides.append(runs_side(name, [stores.run(name)], stores))  # a run id: one seed
        c = comparison.compare(*sides)
    if a.json:
        print(json.dumps(comparison.to_json(c), indent=1))
    else:
        print(comparison.format_text(c))
    if a.figure:
        comparison.plot(c, a.figure)
        print(f"figure: {a.figure}", file=sys.stderr if a.json else sys.stdout)
    return 0


def looks_like_step(name: str, ladder: Catalog) -> bool:
    from ..runs.catalog import looks_like_path

    return looks_like_path(name) or name.partition(".")[0] in ladder.steps


def cmd_serve(a: argparse.Namespace) -> int:
    import contextlib

    try:
        from . import serve
    except ImportError as e:
        print(
            f"ladder: error: `ladder serve` needs the serve extra: pip install 'mnist-ladder[serve]' ({e})",
            file=sys.stderr,
        )
        return 2
    stores = read_dbs(a)
    if not serve.list_models(stores):
        print(
            f"ladder: error: no finished run with weights in {' or '.join(map(str, stores))}; "
            "train one with `ladder run step6`",
            file=sys.stderr,
        )
        return 2
    try:
        sock = serve.bind(a.host, a.port)
    except OSError as e:
        print(f"ladder: error: {e}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
    print(f"serving on {url}  (Ctrl-C to stop)", file=sys.stderr)
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        print("ladder: note: not a loopback address, so other machines can reach this page", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a server stops
        serve.make_server(stores).run(sockets=[sock])
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> Parser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        type=Path,
        default=None,
        help=f"your results store (default {default_db_path()}, or "
        "$MNIST_LADDER_DB); read together with the reference results",
    )
    common.add_argument(
        "--reference",
        action="store_true",
        help=f"the project's reference results ({reference_db_path()}; "
        "$MNIST_LADDER_REFERENCE for another folder) instead of yours: "
        "`run`/`ladder` write there, `report` rewrites the committed REPORT.md",
    )
    common.add_argument(
        "--reference-dir",
        type=Path,
        default=None,
        help="the folder holding the reference results (ladder.db), when not "
        "the checkout's results/ (or $MNIST_LADDER_REFERENCE)",
    )
    common.add_argument(
        "--steps-dir",
        type=Path,
        default=None,
        help="a folder of your own step files (default: $MNIST_LADDER_STEPS, else ./steps when it exists)",
    )
    common.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="MNIST cache folder (default: user cache, or $MNIST_LADDER_DATA)",
    )
    common.add_argument(
        "--idx-dir", type=Path, default=None, help="a folder of MNIST IDX files to use (or $MNIST_LADDER_IDX)"
    )
    train_opts = argparse.ArgumentParser(add_help=False)
    train_opts.add_argument("--device", default="auto", help="auto | cpu | cuda")
    train_opts.add_argument(
        "--precision", default="auto", help="auto | bf16 | off (auto: bf16 where the hardware has it)"
    )
    train_opts.add_argument("--out", type=Path, default=Path("runs"), help="run folders go here")
    train_opts.add_argument(
        "--layout",
        default="auto",
        choices=layout_choices(),
        help="memory layout to train in; auto: the fastest, measured once "
        "per step, CPU and precision (cached in the user cache)",
    )
    train_opts.add_argument(
        "--threads",
        type=thread_count,
        help="CPU threads (ladder: per job; default: the CPU's threads, shared among the jobs)",
    )
    train_opts.add_argument(
        "--val", action="store_true", help="validation protocol: train on 50,000, select on the last 10,000"
    )
    train_opts.add_argument(
        "--val-only",
        action="store_true",
        help="validation protocol without ever evaluating the test set (design and tuning)",
    )

    p = Parser(prog="ladder", description="Climb the MNIST ladder: tiny CNNs, step by step.")
    p.add_argument("--version", action="version", version=f"mnist-ladder {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    s = sub.add_parser("data", parents=[common], help="fetch, verify and cache MNIST")
    s.set_defaults(func=cmd_data)
    s = sub.add_parser("list", parents=[common], help="the steps: parameters, what each changes")
    s.add_argument("--all", action="store_true", help="also the variants tried on the way")
    s.set_defaults(func=cmd_list)
    s = sub.add_parser("summary", parents=[common], help="per-layer table with receptive field")
    s.add_argument("step", help="a step, STEP.VARIANT, or a step file")
    s.set_defaults(func=cmd_summary)
    s = sub.add_parser("new", parents=[common], help="write a starter step file to edit")
    s.add_argument("name", help="the new step's name (letters, digits, - and _)")
    s.add_argument(
        "--from",
        dest="from_step",
        default="step6",
        metavar="STEP",
        help="the step to start from: its model and recipe are spelled out",
    )
    s.add_argument("--out", type=Path, help="the file to write (default: STEPS_DIR/NAME.py)")
    s.set_defaults(func=cmd_new)
    s = sub.add_parser(
        "compare", parents=[common], help="what a change bought: two steps (or runs) over seeds"
    )
    s.add_argument(
        "a",
        help="a step, STEP.VARIANT, step file, run id or run group (the baseline); "
        "STEP@STORE: that step's runs in that store only (STEP@reference: the project's)",
    )
    s.add_argument("b", help="the same, for the change")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--figure", type=Path, help="also write both accuracy curves to this PNG")
    s.set_defaults(func=cmd_compare)
    s = sub.add_parser("run", parents=[common, train_opts], help="train one step")
    s.add_argument("step", nargs="?", help="a step, STEP.VARIANT, or your step file (.py)")
    s.add_argument("--epochs", type=positive_int)
    s.add_argument("--seed", type=seed_int, default=None, help="the run's seed (default 1)")
    s.add_argument(
        "--seeds",
        type=parse_seeds,
        default=None,
        help="several seeds trained together in one process: a count (5 = seeds 1..5) or a list",
    )
    s.add_argument("--batch-size", type=positive_int)
    s.add_argument("--resume", metavar="RUN", help="continue an interrupted run (its id or folder)")
    s.add_argument(
        "--from-trial",
        metavar="STUDY:N",
        type=trial_ref,
        help="re-train a sweep trial's configuration (15 epochs, test protocol)",
    )
    s.add_argument(
        "--storage",
        help="the sweep storage URL, for --from-trial (default: sweeps.db "
        "beside the results store, then the reference results)",
    )
    s.add_argument(
        "--train-limit",
        type=positive_int,
        metavar="N",
        help="train on the first N images only (quick checks)",
    )
    s.add_argument(
        "--eval-limit",
        type=positive_int,
        metavar="N",
        help="evaluate on the first N images only (quick checks)",
    )
    s.set_defaults(func=cmd_run)
    report_opts = argparse.ArgumentParser(add_help=False)
    report_opts.add_argument(
        "--report-path",
        type=Path,
        default=None,
        help="where REPORT.md goes (default: beside your store, or the "
        "checkout's with --reference); figures go beside it in report/",
    )
    s = sub.add_parser(
        "ladder",
        parents=[common, train_opts, report_opts],
        help="run steps x seeds (skipping finished runs), then write the report",
    )
    s.add_argument(
        "--steps",
        type=parse_steps,
        default=None,
        help="comma-separated steps or step files (default: all, yours included)",
    )
    s.add_argument(
        "--seeds",
        type=parse_seeds,
        default=[1, 2, 3],
        help="a count (5 = seeds 1..5) or a list (1,2,3); default 3",
    )
    s.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="parallel processes, each with its share of the CPU threads",
    )
    s.add_argument("--no-report", dest="report", action="store_false")
    s.add_argument(
        "--epochs",
        type=positive_int,
        help="override every step's epochs (quick checks; the report keeps to the steps' own recipes)",
    )
    s.add_argument("--train-limit", type=positive_int, metavar="N", help="quick checks only")
    s.add_argument("--eval-limit", type=positive_int, metavar="N", help="quick checks only")
    s.set_defaults(func=cmd_ladder)
    s = sub.add_parser(
        "report",
        parents=[common, report_opts],
        help="write REPORT.md and report/*.png from the results store",
    )
    s.set_defaults(func=cmd_report)
    s = sub.add_parser("predict", parents=[common], help="predict digits in your own images")
    s.add_argument("run", help="a run id, a run folder, a model.pt, or 'best'")
    s.add_argument("images", type=Path, nargs="+", help="image files or folders")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument(
        "--show", type=Path, metavar="DIR", help="write the 28x28 image the model saw, per input, into DIR"
    )
    s.set_defaults(func=cmd_predict)
    s = sub.add_parser("export", parents=[common], help="export a trained model")
    s.add_argument("run", help="a run id, a run folder, a model.pt, or 'best'")
    s.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    s.add_argument("--out", type=Path, help="output file (default: beside the weights)")
    s.set_defaults(func=cmd_export)
    s = sub.add_parser(
        "sweep",
        parents=[common, train_opts],
        help="Optuna search under a parameter budget; `sweep report NAME`",
    )
    s.add_argument(
        "what",
        nargs="*",
        help="`report NAME`: the study's page and Pareto plot, written into --out (default runs/)",
    )
    s.add_argument("--study", type=study_name, help="study name (workers with the same name share it)")
    s.add_argument("--trials", type=positive_int, default=30, help="finished trials to reach")
    s.add_argument("--epochs", type=positive_int, default=3, help="epochs per trial")
    s.add_argument("--budget", type=positive_int, default=8000, help="maximum parameters")
    s.add_argument(
        "--storage",
        help="Optuna storage URL (default: sweeps.db beside the results "
        "store; reports also look in the reference results; "
        "postgresql://user:pass@host/db to share across machines)",
    )
    s.add_argument(
        "--multi-objective", action="store_true", help="search parameters vs accuracy; keep the Pareto front"
    )
    s.add_argument(
        "--fix",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="pin a search-space parameter (repeatable)",
    )
    s.add_argument(
        "--heartbeat",
        type=positive_int,
        default=10,
        metavar="S",
        help="seconds between worker heartbeats; a trial silent for 3 is retried",
    )
    s.add_argument("--train-limit", type=positive_int, metavar="N")
    s.add_argument("--eval-limit", type=positive_int, metavar="N")
    s.set_defaults(func=cmd_sweep)
    s = sub.add_parser("runs", parents=[common], help="list the runs in a store, newest first")
    s.add_argument("--step", help="only this step's runs")
    s.add_argument("--limit", type=positive_int, help="at most this many")
    s.set_defaults(func=cmd_runs)
    s = sub.add_parser(
        "evaluate", parents=[common], help="a run's (or a step's runs') accuracy on the corrupted set"
    )
    s.add_argument("target", help="a run id, or a step (its finished runs in the store)")
    s.add_argument("--suite", choices=["corrupted"], default="corrupted")
    s.add_argument("--again", action="store_true", help="measure runs measured before again")
    s.set_defaults(func=cmd_evaluate)
    s = sub.add_parser("show", parents=[common], help="one run, epoch by epoch")
    s.add_argument("run")
    s.add_argument(
        "--figures",
        type=Path,
        metavar="DIR",
        help="also write what its final model sees into DIR: kernels.png, "
        "feature-maps.png, saliency.png, receptive-field.png",
    )
    s.set_defaults(func=cmd_show)
    s = sub.add_parser(
        "serve", parents=[common], help="a local web page: draw a digit, see each step's answer"
    )
    s.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    s.set_defaults(func=cmd_serve)
    return p


def _stop_like_ctrl_c(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # `kill`, a job scheduler or a closing session sends SIGTERM, and a job started in the
    # background ignores Ctrl-C: either way the run must be marked interrupted, not left running.
    previous = signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    try:
        a = parser.parse_args(argv)
        if a.command == "run" and not (a.step or a.resume or a.from_trial):
            parser.error("run needs a STEP (or --resume RUN, or --from-trial STUDY:N)")
        if getattr(a, "reference_dir", None):  # one place decides where the reference is
            os.environ["MNIST_LADDER_REFERENCE"] = str(a.reference_dir)
        code = a.func(a)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (`ladder runs | head`): the standard way out, from Python's
        # signal docs: stdout to devnull so that the final flush cannot fail again, no message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except LadderError as e:
        print(f"ladder: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nladder: interrupted; the last finished epoch is saved "
            "(continue with `ladder run --resume RUN`)",
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
