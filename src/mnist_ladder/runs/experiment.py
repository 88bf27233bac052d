"""One run of one step: a run folder (config, metrics, checkpoint, weights) and its rows in
the results store, checkpointed every epoch so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import torch

from .. import steps
from ..core.errors import ConfigError, LadderError
from ..core.files import safe_name, write_atomic
from ..engine.data import MNIST
from ..engine.identity import engine_hash
from ..engine.models import count_parameters
from ..engine.probe import resolve
from ..engine.train import (
    Diverged,
    EpochResult,
    TrainState,
    fit,
    new_state,
    pick_amp,
    pick_device,
    prepare,
)
from ..steps import Recipe, Step
from .identity import training_identity
from .store import Heartbeat, RunClaimed, RunRow, Store, StoreError, new_owner, now

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CHECKPOINT, WEIGHTS, CONFIG, METRICS = "checkpoint.pt", "model.pt", "config.json", "metrics.json"
# Final weights up to this size also go into the results store, which is committed with the
# project: every step's network (tens of kB) fits; Step 0's 25 MB baseline would bloat it.
STORE_WEIGHTS_MAX_BYTES = 1 << 20


class RunError(LadderError, RuntimeError):
    pass


def git_info() -> tuple[str | None, int | None]:
    try:

        def git(*a: str) -> str:
            return subprocess.run(
                ["git", *a], cwd=PACKAGE_DIR, capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()

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
    step_file: str | None = None  # a user's step file: rebuilt from it, only while its hash
    step_hash: str | None = None  # still matches this one (code is never run from the store)

    @property
    def protocol(self) -> str:
        p = ("val" if self.test else "val-only") if self.val else "test"
        if self.train_limit or self.eval_limit:
            p += f":train={self.train_limit or 'all'},eval={self.eval_limit or 'all'}"
        return p

    def identity(self, step: Step, amp: bool) -> str:
        """This spec's training identity (`runs/identity.py`), `step` being its step."""
        return training_identity(step, self.arch, self.recipe, self.protocol, amp)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["recipe"] = self.recipe.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        return cls(**{**d, "recipe": Recipe.from_dict(d["recipe"])})


MAX_SEED = 2**32 - 1  # what every generator takes (torch's and numpy's), and SQLite stores


def make_spec(
    step: Step,
    seed: int,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    val: bool = False,
    train_limit: int | None = None,
    eval_limit: int | None = None,
    recipe: Recipe | None = None,
    test: bool = True,
) -> Spec:
    """The one path from a step to a run spec."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed {seed!r}: a whole number from 0 to {MAX_SEED:,}")
    recipe = recipe or step.recipe
    recipe = dataclasses.replace(
        recipe, epochs=epochs or recipe.epochs, batch_size=batch_size or recipe.batch_size
    )
    if not test and not val:
        raise ValueError("a run without the test set needs the validation protocol")
    return Spec(
        step.name,
        seed,
        recipe,
        val,
        train_limit,
        eval_limit,
        test=test,
        step_file=step.source_file,
        step_hash=step.source_hash,
    )


def resolve_step(spec: Spec) -> Step:
    """The step a spec was made from: built in, a searched architecture, or a user's step file
    (rebuilt from the file on disk, and only while its source is the one the run was made of)."""
    if spec.arch is not None:
        from ..engine.family import as_step

        return as_step(spec.step, spec.arch, spec.recipe)
    if spec.step_file is None:
        if spec.step_hash is not None:
            raise RunError(
                f"{spec.step} was defined inline (a notebook cell or a script): "
                "continue it from Python with ml.fit(step, resume=RUN)"
            )
        return steps.get(spec.step)
    from .catalog import load_file

    step = load_file(spec.step_file)
    name = spec.step.partition(".")[2]
    step = step.variant(name) if name else step
    if step.source_hash != spec.step_hash:
        raise RunError(
            f"{spec.step_file} changed since this run started (source hash "
            f"{step.source_hash}, the run's {spec.step_hash}): it is another "
            "experiment now; start a new run"
        )
    return step


@dataclass(frozen=True)
class RunOptions:
    """How a run runs, as against what it is (its Spec): shared by `ladder run`, `ladder
    ladder` and `ml.fit`. `device` and `amp` are resolved (`RunOptions.pick`)."""

    device: str = "cpu"
    amp: bool = False
    layout: str = "auto"  # the memory layout: `auto` measured once per step and machine
    out_dir: str = "runs"  # where run folders go
    threads: int | None = None  # CPU threads; None: torch's default
    data_dir: str | None = None  # MNIST's cache folder (`--data-dir`); None: the default
    idx_dir: str | None = None  # a folder of IDX files to read MNIST from (`--idx-dir`)

    @classmethod
    def pick(cls, device: str = "auto", precision: str = "auto", **kwargs) -> RunOptions:
        """`--device` and `--precision` as given (auto, cpu, cuda; auto, bf16, off)."""
        dev = pick_device(device)
        return cls(str(dev), pick_amp(precision, dev), **kwargs)


def run(
    spec: Spec,
    store: Store,
    options: RunOptions,
    *,
    resume: RunRow | None = None,
    step: Step | None = None,
    log: Callable[[str], None] = print,
    on_result: Callable[[EpochResult], None] | None = None,
) -> RunRow:
    """`execute` with MNIST loaded and the options applied: what every front end calls."""
    from ..engine.data import load

    mnist = load(options.data_dir and Path(options.data_dir), options.idx_dir and Path(options.idx_dir))
    return execute(
        spec,
        mnist,
        store,
        Path(options.out_dir),
        device=torch.device(options.device),
        amp=options.amp,
        resume=resume,
        step=step,
        layout=options.layout,
        log=log,
        on_result=on_result,
    )


def resume_target(store: Store, ref: str) -> tuple[RunRow, Spec]:
    """The one resume path (`ladder run --resume`, `ml.fit(resume=...)`): the interrupted run
    named by its id or its folder (a folder whose run the store lost enters it again), and the
    spec its checkpoint holds. A run that finished, or that a live process trains, is refused."""
    folder = Path(ref)
    if folder.is_dir() and (folder / CONFIG).is_file():
        try:
            run_id = json.loads((folder / CONFIG).read_text())["id"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RunError(f"{folder}: not a run folder (no readable {CONFIG})") from e
        try:
            row = store.run(run_id)
        except StoreError:  # the store lost it (deleted or replaced under the run)
            row = register_folder(folder, store)
            print(f"{run_id} was not in {store.path}: recorded again from its folder")
    else:
        row = store.run(ref)
    if row.effective_status == "finished":
        raise RunError(f"run {row.id} already finished")
    if row.effective_status == "running":
        raise RunError(f"run {row.id} is still running (pid {row.pid} on {row.host})")
    folder = Path(row.run_dir)
    if (folder / CHECKPOINT).is_file():
        spec = Spec.from_dict(load_checkpoint(folder / CHECKPOINT)["spec"])
    else:  # stopped before its first checkpoint (a full disk): it starts again from its config
        try:
            spec = Spec.from_dict(json.loads((folder / CONFIG).read_text())["spec"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RunError(f"{folder}: no checkpoint and no readable {CONFIG}: start a new run") from e
    return row, spec


def new_run_id(spec: Spec) -> str:
    return f"{spec.step}-s{spec.seed}-{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def epoch_line(r: EpochResult, total: int) -> str:
    def pair(name: str, loss: float | None, acc: float | None) -> str:
        if acc is None:
            return ""
        return f"  {name} {'-' if loss is None else f'{loss:.4f}'} {acc:6.2f}%"

    seconds = f"  {r.seconds:5.1f}s" if r.seconds is not None else ""
    lr = f"  lr {r.lr:.5f}" if r.lr is not None else ""
    return (
        f"epoch {r.epoch:>2}/{total}{lr}{pair('train', r.train_loss, r.train_acc)}"
        f"{pair('test', r.test_loss, r.test_acc)}{pair('val', r.val_loss, r.val_acc)}{seconds}"
    )


def execute(
    spec: Spec,
    mnist: MNIST,
    store: Store,
    out_dir: Path,
    *,
    device: torch.device,
    amp: bool,
    resume: RunRow | None = None,
    step: Step | None = None,
    layout: str = "cl",
    log: Callable[[str], None] = print,
    on_result: Callable[[EpochResult], None] | None = None,
) -> RunRow:
    """Train `spec` (or continue the interrupted run `resume`), recording as it goes.

    `step` is the spec's step when the caller holds it already (one defined in a notebook);
    otherwise it is resolved from the spec. The run is claimed in the store with a lease that
    a heartbeat renews: a second process asking for the same run is refused. `layout` is the
    memory layout to train in (`auto`: measured once per step and machine, see layout.py); a
    resumed run keeps the one it started with.
    """
    step = step or resolve_step(spec)
    identity = spec.identity(step, amp)
    if resume is not None and resume.training_id != identity:
        made = (
            "before runs recorded a training identity"
            if resume.training_id is None
            else f"with training identity {resume.training_id}"
        )
        raise RunError(
            f"run {resume.id} was started {made}; this code's is {identity} (the "
            "engine, the step's network or recipe, the precision or torch changed): "
            "finishing it here would mix two experiments; start a new run"
        )
    data = prepare(
        mnist, device, val=spec.val, train_limit=spec.train_limit, eval_limit=spec.eval_limit, test=spec.test
    )
    has_checkpoint = resume is not None and (Path(resume.run_dir) / CHECKPOINT).is_file()
    ckpt = load_checkpoint(Path(resume.run_dir) / CHECKPOINT) if has_checkpoint else None
    if ckpt is not None:
        layout = ckpt.get("layout", "cl")
    else:
        layout = resolve(layout, step, spec.recipe, device, amp, data, identity=identity)
    state = new_state(step, spec.recipe, data, spec.seed, device, layout)
    owner = new_owner()
    if resume is not None:
        run_id, run_dir = resume.id, Path(resume.run_dir)
        store.claim(run_id, owner)
        if ckpt is not None:
            state.load_state_dict(ckpt["state"])
        prior_seconds = ckpt["wall_seconds"] if ckpt is not None else 0.0
        # The checkpoint is the record of what ran: epochs it holds that the store lost (a
        # store restored from an older copy under a live run) are written back.
        for result in state.history[len(store.epochs(run_id)) :]:
            store.add_epoch(run_id, asdict(result))
        log(f"resuming {run_id} after epoch {len(state.history)}")
    else:
        run_id = new_run_id(spec)
        run_dir = (out_dir / run_id).resolve()
        try:
            run_dir.mkdir(parents=True)
        except OSError as e:
            raise RunError(f"cannot create the run folder {run_dir} ({e.strerror or e})") from None
        commit, dirty = git_info()
        row = RunRow(
            run_id,
            spec.step,
            spec.seed,
            spec.protocol,
            spec.recipe.to_dict(),
            count_parameters(state.model),
            engine_hash(),
            commit,
            dirty,
            torch.__version__,
            str(device),
            int(amp),
            str(run_dir),
            socket.gethostname(),
            os.getpid(),
            now(),
            None,
            "running",
            None,
            source_hash=step.source_hash,
            source_file=step.source_file,
            source=step.source,
            layout=layout,
            training_id=identity,
        )
        try:
            store.add_run(row, owner)
        except RunClaimed:
            run_dir.rmdir()
            raise
        try:
            write_atomic(run_dir / CONFIG, json.dumps({**asdict(row), "spec": spec.to_dict()}, indent=2))
        except OSError as e:  # nothing trained yet: nothing to keep, nothing half-written
            store.delete_run(run_id)
            shutil.rmtree(run_dir, ignore_errors=True)
            raise RunError(
                f"cannot write the run's {CONFIG} in {run_dir} ({e.strerror or e}); nothing recorded"
            ) from None
        prior_seconds = 0.0
    t0 = time.perf_counter()

    def on_epoch(result: EpochResult, st: TrainState) -> None:
        wall = prior_seconds + time.perf_counter() - t0
        # The checkpoint first: an epoch in the store is always one a resume can start after.
        try:
            save_torch(
                {"spec": spec.to_dict(), "state": st.state_dict(), "wall_seconds": wall, "layout": layout},
                run_dir / CHECKPOINT,
            )
            write_atomic(run_dir / METRICS, json.dumps([asdict(h) for h in st.history], indent=1))
        except OSError as e:
            raise RunError(
                f"could not write the checkpoint of epoch {result.epoch} in {run_dir} "
                f"({e.strerror or e}); the run stops after epoch {result.epoch - 1}: "
                f"free space, then `ladder run --resume {run_id}`"
            ) from None
        store.add_epoch(run_id, asdict(result))

    def stop(status: str, note: str | None = None) -> None:
        try:
            store.set_status(run_id, status, prior_seconds + time.perf_counter() - t0, note=note)
            store.release(run_id, owner)
        except StoreError:
            pass  # the store is gone: the folder keeps the run (see `ladder run --resume`)

    try:
        with Heartbeat(store.path, run_id, owner):
            for result in fit(
                step, data, spec.recipe, seed=spec.seed, amp=amp, state=state, on_epoch=on_epoch
            ):
                log(epoch_line(result, spec.recipe.epochs))
                if on_result:  # e.g. a notebook's live curve
                    on_result(result)
    except KeyboardInterrupt:
        stop("interrupted")
        raise
    except Diverged as e:  # stored, so that the attempt is seen, but never a result
        stop("diverged", e.where())
        raise RunError(
            f"run {run_id} diverged: {e.where()}; stored as diverged (no weights, never a "
            "step's result); lower the learning rate or check the model"
        ) from None
    except RunError:  # a checkpoint that could not be written: every epoch before it holds
        stop("interrupted")
        raise
    except StoreError as e:
        stop("interrupted")
        raise StoreError(
            f"{e}; the run folder {run_dir} keeps every finished epoch: "
            f"`ladder run --resume {run_dir}` continues it and records it in the "
            "store again"
        ) from None
    except BaseException as e:
        stop("failed", f"{type(e).__name__}: {e}")
        raise
    try:
        save_torch(
            {
                "step": spec.step,
                "arch": spec.arch,
                "params": count_parameters(state.model),
                "step_file": spec.step_file,
                "step_hash": spec.step_hash,
                "state_dict": state.eval_model.state_dict(),
            },
            run_dir / WEIGHTS,
        )
        if (run_dir / WEIGHTS).stat().st_size <= STORE_WEIGHTS_MAX_BYTES:
            store.put_weights(run_id, (run_dir / WEIGHTS).read_bytes())
        store.set_status(run_id, "finished", prior_seconds + time.perf_counter() - t0)
        store.release(run_id, owner)
    except (OSError, StoreError) as e:  # every epoch is in the checkpoint: a resume ends it
        stop("interrupted")
        why = e.strerror or e if isinstance(e, OSError) else e
        raise RunError(
            f"could not record run {run_id}'s final weights ({why}); every epoch is in its "
            f"checkpoint: free space, then `ladder run --resume {run_dir}`"
        ) from None
    return store.run(run_id)


def save_torch(obj: object, path: Path) -> None:
    def write(tmp: Path) -> None:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # torch's zip writer reports a failed write (a full disk) so
            raise OSError(errno.EIO, f"writing failed, is the disk full? ({_first_line(e)})") from None

    write_atomic(path, write)


def register_folder(run_dir: Path, store: Store) -> RunRow:
    """A run folder whose run is not in `store` (the store was deleted or replaced under it,
    or the folder was copied from elsewhere) enters it again, with every epoch its checkpoint
    holds, as an interrupted run that can be resumed."""
    try:
        config = json.loads((run_dir / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"{run_dir}: not a run folder (no readable {CONFIG})") from e
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    known = {f.name for f in dataclasses.fields(RunRow)}
    row = RunRow(**{k: v for k, v in config.items() if k in known})
    row = dataclasses.replace(
        row, run_dir=str(run_dir.resolve()), status="interrupted", lease_owner=None, lease_until=None
    )
    store.add_run(row)
    for h in ckpt["state"]["history"]:
        store.add_epoch(row.id, h)
    store.set_status(
        row.id, "interrupted", ckpt["wall_seconds"], note=f"re-registered from its folder {run_dir}"
    )
    return store.run(row.id)


def weights_file(row: RunRow, store) -> Path | None:
    """A finished run's model.pt: its run folder's, else the copy in the results store, which
    is checked first and then kept in the user's cache (never written where a store row says:
    a store is data, not a list of places to write)."""
    from ..engine.data import default_cache_dir

    path = Path(row.run_dir) / WEIGHTS
    if path.is_absolute() and path.is_file():
        return path
    cached = default_cache_dir() / "weights" / f"{safe_name(row.id, 'a run id in the store')}.pt"
    if cached.is_file():
        return cached
    if (data := store.weights(row.id)) is None:
        return None
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise RunError(
            f"run {row.id}: the weights in the store are not a loadable model ({_first_line(e)})"
        ) from None
    return write_atomic(cached, data, make_parent=True)


def _first_line(e: BaseException) -> str:
    """An exception's first line, without torch's advice to load unsafely."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first.split(" In PyTorch 2.6")[0].split("weights_only=False")[0].rstrip(" ,(.")


# Every model file and checkpoint is read through load_checkpoint, which refuses one larger
# than this before reading it: Step 0, the largest network here (6.4M parameters), checkpoints
# to about 77 MB with its optimizer state; a padded or foreign file is not read whole.
MAX_CHECKPOINT_BYTES = 256 * 2**20
# ...and a model file's network is at most this large, counted from its stored tensors
# before any network is built (Step 0: 6.4M).
MAX_MODEL_PARAMS = 10_000_000


def load_checkpoint(path: Path) -> dict:
    """weights_only: a checkpoint crafted to run code when unpickled is refused."""
    if not path.is_file():
        raise RunError(f"no checkpoint at {path}")
    if (size := path.stat().st_size) > MAX_CHECKPOINT_BYTES:
        raise RunError(
            f"{path}: {size:,} bytes, over the {MAX_CHECKPOINT_BYTES // 2**20} MB limit of a "
            "model file or checkpoint; refused unread"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        unsafe = "weights only" in str(e).lower() or "weights_only" in str(e)
        why = "it holds objects that could run code when loaded; refused" if unsafe else _first_line(e)
        raise RunError(f"{path}: not a loadable checkpoint ({why})") from None


# ---------------------------------------------------------------- many runs


@dataclass(frozen=True)
class Task:
    """One run for `ladder ladder`: a spec, the store it goes to, and how it runs."""

    spec: Spec
    db: str
    options: RunOptions


def made_by_other_code(task: Task, store: Store) -> RunRow | None:
    """A finished run of this task's step and seed that other code (another training identity)
    made, when none has this one: the task runs again, since a result is tied to what made it."""
    identity = task_identity(task)
    if store.find_finished(task.spec.step, task.spec.seed, identity):
        return None
    return store.find_finished(task.spec.step, task.spec.seed, None)


def task_identity(task: Task) -> str:
    return task.spec.identity(resolve_step(task.spec), task.options.amp)


def run_task(task: Task) -> tuple[str, str]:
    """Run one spec, skipping it if finished with this identity, resuming it if interrupted.
    Module-level so that worker processes can run it."""
    if task.options.threads:
        torch.set_num_threads(task.options.threads)
    with Store(task.db) as store:
        identity = task_identity(task)
        if done := store.find_finished(task.spec.step, task.spec.seed, identity):
            return done.id, "skipped (already finished with this training identity)"
        resume = store.find_resumable(task.spec.step, task.spec.seed, identity)
        name = f"{task.spec.step} seed {task.spec.seed}"
        try:
            row = run(
                task.spec,
                store,
                task.options,
                resume=resume,
                log=lambda s: print(f"[{name}] {s}", flush=True),
            )
        except RunClaimed as e:
            return resume.id if resume else "-", f"skipped: {e}"
        return row.id, "resumed and finished" if resume else "finished"
