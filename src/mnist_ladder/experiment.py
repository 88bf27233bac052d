"""One run of one step: a run folder (config, metrics, checkpoint, weights) and its rows in
the results store, checkpointed every epoch so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import torch

from . import steps
from .data import MNIST
from .models import count_parameters
from .steps import Recipe, Step
from .store import RunRow, Store, now
from .train import EpochResult, TrainState, fit, new_state, prepare, save_atomic

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKPOINT, WEIGHTS, CONFIG, METRICS = "checkpoint.pt", "model.pt", "config.json", "metrics.json"
# Final weights up to this size also go into the results store, which is committed with the
# project: every step's network (tens of kB) fits; Step 0's 25 MB baseline would bloat it.
STORE_WEIGHTS_MAX_BYTES = 1 << 20


class RunError(RuntimeError):
    pass


def _hash_sources() -> str:
    h = hashlib.sha256()
    for p in sorted(PACKAGE_DIR.rglob("*.py")):
        h.update(p.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


# Read once, when the package is imported: the sources this process runs. Hashing the files at
# each run's start would credit a long `ladder ladder` run to any edit made while it ran.
_CODE_HASH = _hash_sources()


def code_hash() -> str:
    """sha256 of the package's own sources as imported: the code version a result came from."""
    return _CODE_HASH


def git_info() -> tuple[str | None, int | None]:
    try:
        def git(*a: str) -> str:
            return subprocess.run(["git", *a], cwd=PACKAGE_DIR, capture_output=True, text=True,
                                  check=True, timeout=10).stdout.strip()
        return git("rev-parse", "HEAD"), int(bool(git("status", "--porcelain", "--", ".")))
    except (OSError, subprocess.SubprocessError):
        return None, None


@dataclass(frozen=True)
class Spec:
    """What a run is: results are comparable when their specs (and code) are equal."""

    step: str
    seed: int
    recipe: Recipe
    val: bool = False  # the validation protocol
    train_limit: int | None = None  # small subsets, for tests
    eval_limit: int | None = None
    arch: dict | None = None  # a searched architecture (see family.py) instead of a ladder step
    test: bool = True  # False (with val): the test set is never evaluated, for design work

    @property
    def protocol(self) -> str:
        p = ("val" if self.test else "val-only") if self.val else "test"
        if self.train_limit or self.eval_limit:
            p += f":train={self.train_limit or 'all'},eval={self.eval_limit or 'all'}"
        return p

    def to_dict(self) -> dict:
        d = asdict(self)
        d["recipe"] = self.recipe.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        return cls(**{**d, "recipe": Recipe.from_dict(d["recipe"])})


def make_spec(step: Step, seed: int, *, epochs: int | None = None, batch_size: int | None = None,
              val: bool = False, train_limit: int | None = None,
              eval_limit: int | None = None, recipe: Recipe | None = None,
              test: bool = True) -> Spec:
    recipe = recipe or step.recipe
    recipe = dataclasses.replace(recipe, epochs=epochs or recipe.epochs,
                                 batch_size=batch_size or recipe.batch_size)
    if not test and not val:
        raise ValueError("a run without the test set needs the validation protocol")
    return Spec(step.name, seed, recipe, val, train_limit, eval_limit, test=test)


def resolve_step(spec: Spec) -> Step:
    if spec.arch is None:
        return steps.get(spec.step)
    from .family import as_step
    return as_step(spec.step, spec.arch, spec.recipe)


def new_run_id(spec: Spec) -> str:
    return f"{spec.step}-s{spec.seed}-{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def epoch_line(r: EpochResult, total: int) -> str:
    test = f"  test {r.test_loss:.4f} {r.test_acc:6.2f}%" if r.test_acc is not None else ""
    val = f"  val {r.val_loss:.4f} {r.val_acc:6.2f}%" if r.val_acc is not None else ""
    return (f"epoch {r.epoch:>2}/{total}  lr {r.lr:.5f}  train {r.train_loss:.4f} {r.train_acc:6.2f}%"
            f"{test}{val}  {r.seconds:5.1f}s")


def execute(spec: Spec, mnist: MNIST, store: Store, out_dir: Path, *, device: torch.device,
            amp: bool, resume: RunRow | None = None,
            log: Callable[[str], None] = print) -> RunRow:
    """Train `spec` (or continue the interrupted run `resume`), recording as it goes."""
    step = resolve_step(spec)
    data = prepare(mnist, device, val=spec.val, train_limit=spec.train_limit,
                   eval_limit=spec.eval_limit, test=spec.test)
    state = new_state(step, spec.recipe, data, spec.seed, device)
    if resume is not None:
        run_id, run_dir = resume.id, Path(resume.run_dir)
        ckpt = load_checkpoint(run_dir / CHECKPOINT)
        state.load_state_dict(ckpt["state"])
        prior_seconds = ckpt["wall_seconds"]
        store.set_status(run_id, "running")
        # The checkpoint is the record of what ran: epochs it holds that the store lost (a
        # store restored from an older copy under a live run) are written back.
        for result in state.history[len(store.epochs(run_id)):]:
            store.add_epoch(run_id, asdict(result))
        log(f"resuming {run_id} after epoch {len(state.history)}")
    else:
        run_id = new_run_id(spec)
        run_dir = out_dir / run_id
        run_dir.mkdir(parents=True)
        commit, dirty = git_info()
        row = RunRow(run_id, spec.step, spec.seed, spec.protocol, spec.recipe.to_dict(),
                     count_parameters(state.model), code_hash(), commit, dirty,
                     torch.__version__, str(device), int(amp), str(run_dir),
                     socket.gethostname(), os.getpid(), now(), None, "running", None)
        (run_dir / CONFIG).write_text(json.dumps({**asdict(row), "spec": spec.to_dict()}, indent=2))
        store.add_run(row)
        prior_seconds = 0.0
    t0 = time.perf_counter()

    def on_epoch(result: EpochResult, st: TrainState) -> None:
        store.add_epoch(run_id, asdict(result))
        wall = prior_seconds + time.perf_counter() - t0
        save_atomic({"spec": spec.to_dict(), "state": st.state_dict(), "wall_seconds": wall},
                    run_dir / CHECKPOINT)
        (run_dir / METRICS).write_text(json.dumps([asdict(h) for h in st.history], indent=1))

    try:
        for result in fit(step, data, spec.recipe, seed=spec.seed, amp=amp, state=state,
                          on_epoch=on_epoch):
            log(epoch_line(result, spec.recipe.epochs))
    except KeyboardInterrupt:
        store.set_status(run_id, "interrupted", prior_seconds + time.perf_counter() - t0)
        raise
    except BaseException as e:
        store.set_status(run_id, "failed", prior_seconds + time.perf_counter() - t0,
                         note=f"{type(e).__name__}: {e}")
        raise
    save_atomic({"step": spec.step, "arch": spec.arch, "params": count_parameters(state.model),
                 "state_dict": state.eval_model.state_dict()}, run_dir / WEIGHTS)
    if (run_dir / WEIGHTS).stat().st_size <= STORE_WEIGHTS_MAX_BYTES:
        store.put_weights(run_id, (run_dir / WEIGHTS).read_bytes())
    store.set_status(run_id, "finished", prior_seconds + time.perf_counter() - t0)
    return store.run(run_id)


def weights_file(row: RunRow, store: Store) -> Path | None:
    """A finished run's model.pt; restored from the results store when its run folder is
    gone (the store travels with the project, run folders do not)."""
    path = Path(row.run_dir) / WEIGHTS
    if not path.is_file() and (data := store.weights(row.id)) is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path if path.is_file() else None


def load_checkpoint(path: Path) -> dict:
    """weights_only: a checkpoint crafted to run code when unpickled is refused."""
    if not path.is_file():
        raise RunError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in first:  # torch's advice (load it unsafely) is not ours to give
            first = "it holds objects that could run code when loaded; refused"
        raise RunError(f"{path}: not a loadable checkpoint ({first})") from e


# ---------------------------------------------------------------- many runs


@dataclass(frozen=True)
class Task:
    spec: Spec
    db: str
    out_dir: str
    device: str
    amp: bool
    threads: int


def made_by_other_code(task: Task, store: Store) -> RunRow | None:
    """A finished run of this task's configuration that older (or other) code made: the task
    runs again, since a result is tied to the code that produced it."""
    key = (task.spec.step, task.spec.seed, task.spec.protocol, task.spec.recipe)
    if store.find_finished(*key, code_hash()):
        return None
    return store.find_finished(*key, None)


def run_task(task: Task) -> tuple[str, str]:
    """Run one spec, skipping it if finished with this code, resuming it if interrupted.
    Module-level so that worker processes can run it."""
    from .data import load
    torch.set_num_threads(task.threads)
    with Store(task.db) as store:
        key = (task.spec.step, task.spec.seed, task.spec.protocol, task.spec.recipe,
               code_hash())
        if done := store.find_finished(*key):
            return done.id, "skipped (already finished with this recipe and code)"
        resume = store.find_resumable(*key)
        name = f"{task.spec.step} seed {task.spec.seed}"
        row = execute(task.spec, load(), store, Path(task.out_dir), device=torch.device(task.device),
                      amp=task.amp, resume=resume, log=lambda s: print(f"[{name}] {s}", flush=True))
        return row.id, "resumed and finished" if resume else "finished"
