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
from ..engine.pack import unpack
from ..engine.probe import resolve
from ..engine.train import (
    Diverged,
    EpochResult,
    TrainState,
    fit_seeds,
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
    spec: Spec | list[Spec],
    store: Store,
    options: RunOptions,
    *,
    resume: RunRow | list[RunRow] | None = None,
    step: Step | None = None,
    log: Callable[[str], None] = print,
    on_result: Callable[[EpochResult], None] | None = None,
) -> RunRow | list[RunRow]:
    """`execute` with MNIST loaded and the options applied: what every front end calls. A
    list of specs (one step, several seeds) trains them together and returns their rows."""
    from ..engine.data import load

    mnist = load(options.data_dir and Path(options.data_dir), options.idx_dir and Path(options.idx_dir))
    specs = spec if isinstance(spec, list) else [spec]
    resumed = None if resume is None else (resume if isinstance(resume, list) else [resume])
    rows = execute_group(
        specs,
        mnist,
        store,
        Path(options.out_dir),
        device=torch.device(options.device),
        amp=options.amp,
        resume=resumed,
        step=step,
        layout=options.layout,
        log=log,
        on_result=on_result,
    )
    return rows if isinstance(spec, list) else rows[0]


GROUP_FILE = "group.json"  # a group folder's list of its runs (their own folders are siblings)


def checkpoint_path(row: RunRow) -> Path:
    """Where a run's checkpoint is: its own folder's, or its group's (one for all its seeds)."""
    folder = Path(row.run_dir)
    return (folder.parent / row.run_group if row.run_group else folder) / CHECKPOINT


def resume_target(store: Store, ref: str) -> tuple[list[RunRow], list[Spec]]:
    """The one resume path (`ladder run --resume`, `ml.fit(resume=...)`): the interrupted run
    named by its id or its folder (a folder whose run the store lost enters it again), with
    every run trained together with it (a group's folder names them all), and the specs its
    checkpoint holds. A run that finished, or that a live process trains, is refused."""
    folder = Path(ref)
    if folder.is_dir() and (folder / GROUP_FILE).is_file():
        try:
            ref = json.loads((folder / GROUP_FILE).read_text())["runs"][0]
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            raise RunError(f"{folder}: not a group folder (no readable {GROUP_FILE})") from e
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
    rows = store.group(row.run_group) if row.run_group else [row]
    if all(r.effective_status in ("finished", "diverged") for r in rows):
        raise RunError(f"run {row.id} already finished" + (" with its group" if len(rows) > 1 else ""))
    if live := [r for r in rows if r.effective_status == "running"]:
        raise RunError(f"run {live[0].id} is still running (pid {live[0].pid} on {live[0].host})")
    path = checkpoint_path(row)
    if path.is_file():
        ckpt = load_checkpoint(path)
        specs = [Spec.from_dict(d) for d in ckpt.get("specs") or [ckpt["spec"]]]
    else:  # stopped before its first checkpoint (a full disk): it starts again from its config
        try:
            specs = [Spec.from_dict(json.loads((Path(r.run_dir) / CONFIG).read_text())["spec"]) for r in rows]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RunError(f"{row.run_dir}: no checkpoint and no readable {CONFIG}: start a new run") from e
    return rows, specs


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


def execute(spec: Spec, mnist: MNIST, store: Store, out_dir: Path, **kwargs) -> RunRow:
    """One run: `execute_group` of one seed (`resume` a RunRow)."""
    resume = kwargs.pop("resume", None)
    return execute_group([spec], mnist, store, out_dir, resume=resume and [resume], **kwargs)[0]


def execute_group(
    specs: list[Spec],
    mnist: MNIST,
    store: Store,
    out_dir: Path,
    *,
    device: torch.device,
    amp: bool,
    resume: list[RunRow] | None = None,
    step: Step | None = None,
    layout: str = "cl",
    log: Callable[[str], None] = print,
    on_result: Callable[[EpochResult], None] | None = None,
) -> list[RunRow]:
    """Train `specs` (one step, one seed each, otherwise equal) together as one packed
    network (`engine/pack.py`), or continue the interrupted group `resume`, recording as it
    goes; each seed is its own run. One spec is one run, as it always was.

    `step` is the specs' step when the caller holds it already (one defined in a notebook);
    otherwise it is resolved from the spec. The runs are claimed in the store, together, with
    a lease that a heartbeat renews: a second process asking for any of them is refused.
    `layout` is the memory layout to train in (`auto`: measured once per step and machine, see
    layout.py); a resumed run keeps the one it started with.
    """
    spec = specs[0]
    seeds = [s.seed for s in specs]
    if any(dataclasses.replace(s, seed=spec.seed) != spec for s in specs):
        raise ValueError("seeds trained together share everything but their seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {seeds}: each seed once")
    step = step or resolve_step(spec)
    identity = spec.identity(step, amp)
    for prior in resume or []:
        if prior.training_id != identity:
            made = (
                "before runs recorded a training identity"
                if prior.training_id is None
                else f"with training identity {prior.training_id}"
            )
            raise RunError(
                f"run {prior.id} was started {made}; this code's is {identity} (the "
                "engine, the step's network or recipe, the precision or torch changed): "
                "finishing it here would mix two experiments; start a new run"
            )
    data = prepare(
        mnist, device, val=spec.val, train_limit=spec.train_limit, eval_limit=spec.eval_limit, test=spec.test
    )
    ckpt_file = checkpoint_path(resume[0]) if resume else None
    ckpt = load_checkpoint(ckpt_file) if ckpt_file is not None and ckpt_file.is_file() else None
    if ckpt is not None:
        layout = ckpt.get("layout", "cl")
    else:
        layout = resolve(layout, step, spec.recipe, device, amp, data, identity=identity)
    state = new_state(step, spec.recipe, data, seeds, device, layout)
    params = count_parameters(step.build())
    owner = new_owner()
    if resume is not None:
        rows = resume
        store.claim_all([r.id for r in rows], owner)
        if ckpt is not None:
            state.load_state_dict(ckpt["state"])
        prior_seconds = ckpt["wall_seconds"] if ckpt is not None else 0.0
        # The checkpoint is the record of what ran: epochs it holds that the store lost (a
        # store restored from an older copy under a live run) are written back.
        store.add_epochs(
            [
                (r.id, asdict(e))
                for r, h in zip(rows, state.histories, strict=True)
                for e in h[len(store.epochs(r.id)) :]
            ]
        )
        log(f"resuming {', '.join(r.id for r in rows)} after epoch {state.epochs_done}")
    else:
        group = (
            f"group-{spec.step}-{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
            if len(specs) > 1
            else None
        )
        rows = [_new_row(s, step, params, device, amp, out_dir, layout, identity, group) for s in specs]
        folders = [Path(r.run_dir) for r in rows] + ([out_dir.resolve() / group] if group else [])
        try:
            for folder in folders:
                folder.mkdir(parents=True)
        except OSError as e:
            _remove(folders)
            raise RunError(f"cannot create the run folder {folder} ({e.strerror or e})") from None
        try:
            store.add_runs(rows, owner)
        except RunClaimed:
            _remove(folders)
            raise
        try:
            for r, s in zip(rows, specs, strict=True):
                write_atomic(
                    Path(r.run_dir) / CONFIG, json.dumps({**asdict(r), "spec": s.to_dict()}, indent=2)
                )
            if group:
                write_atomic(
                    folders[-1] / GROUP_FILE, json.dumps({"runs": [r.run_dir for r in rows]}, indent=2)
                )
        except OSError as e:  # nothing trained yet: nothing to keep, nothing half-written
            for r in rows:
                store.delete_run(r.id)
            _remove(folders)
            raise RunError(
                f"cannot write the run's {CONFIG} in {Path(rows[0].run_dir).parent} ({e.strerror or e}); "
                "nothing recorded"
            ) from None
        prior_seconds = 0.0
        ckpt_file = checkpoint_path(rows[0])
    ids = [r.id for r in rows]
    named = ids[0] if len(ids) == 1 else f"{ids[0]} (or any run of its group)"
    t0 = time.perf_counter()
    stopped: set[int] = {k for k in state.diverged}  # seeds whose runs have ended

    def record(results: list[EpochResult | None], st: TrainState) -> None:
        wall = prior_seconds + time.perf_counter() - t0
        epoch = next(r.epoch for r in results if r is not None)
        # The checkpoint first: an epoch in the store is always one a resume can start after.
        try:
            save_torch(
                {
                    "specs": [s.to_dict() for s in specs],
                    "state": st.state_dict(),
                    "wall_seconds": wall,
                    "layout": layout,
                },
                ckpt_file,
            )
            for r, h in zip(rows, st.histories, strict=True):
                write_atomic(Path(r.run_dir) / METRICS, json.dumps([asdict(e) for e in h], indent=1))
        except OSError as e:
            raise RunError(
                f"could not write the checkpoint of epoch {epoch} in {ckpt_file.parent} "
                f"({e.strerror or e}); the run stops after epoch {epoch - 1}: "
                f"free space, then `ladder run --resume {named}`"
            ) from None
        store.add_epochs([(r.id, asdict(e)) for r, e in zip(rows, results, strict=True) if e is not None])
        for k in set(st.diverged) - stopped:  # a seed that diverged: the others train on
            stopped.add(k)
            store.set_status(rows[k].id, "diverged", wall, note=st.diverged[k].where())
            store.release(rows[k].id, owner)
            log(f"{rows[k].id} diverged: {st.diverged[k].where()}; stored as diverged")

    def stop(status: str, note: str | None = None) -> None:
        try:
            for k, r in enumerate(rows):
                if k not in stopped:
                    store.set_status(r.id, status, prior_seconds + time.perf_counter() - t0, note=note)
                    store.release(r.id, owner)
        except StoreError:
            pass  # the store is gone: the folder keeps the run (see `ladder run --resume`)

    try:
        with Heartbeat(store.path, ids, owner):
            for results, st in fit_seeds(step, data, spec.recipe, amp=amp, state=state):
                record(results, st)
                for k, result in enumerate(results):
                    if result is None:
                        continue
                    prefix = f"[seed {seeds[k]}] " if len(seeds) > 1 else ""
                    log(prefix + epoch_line(result, spec.recipe.epochs))
                    if on_result:  # e.g. a notebook's live curve
                        on_result(result)
    except KeyboardInterrupt:
        stop("interrupted")
        raise
    except Diverged as e:  # stored, so that the attempt is seen, but never a result
        stop("diverged", e.where())
        raise RunError(
            f"run {named} diverged: {e.where()}; stored as diverged (no weights, never a "
            "step's result); lower the learning rate or check the model"
        ) from None
    except RunError:  # a checkpoint that could not be written: every epoch before it holds
        stop("interrupted")
        raise
    except StoreError as e:
        stop("interrupted")
        raise StoreError(
            f"{e}; the run folder {Path(rows[0].run_dir)} keeps every finished epoch: "
            f"`ladder run --resume {Path(rows[0].run_dir)}` continues it and records it in the "
            "store again"
        ) from None
    except BaseException as e:
        stop("failed", f"{type(e).__name__}: {e}")
        raise
    try:
        template = step.build()
        trained = state.eval_model.state_dict()
        for k, (r, s) in enumerate(zip(rows, specs, strict=True)):
            if k in stopped:
                continue
            run_dir = Path(r.run_dir)
            save_torch(
                {
                    "step": s.step,
                    "arch": s.arch,
                    "params": params,
                    "step_file": s.step_file,
                    "step_hash": s.step_hash,
                    "state_dict": unpack(trained, template, len(rows), k),
                },
                run_dir / WEIGHTS,
            )
            if (run_dir / WEIGHTS).stat().st_size <= STORE_WEIGHTS_MAX_BYTES:
                store.put_weights(r.id, (run_dir / WEIGHTS).read_bytes())
        for k, r in enumerate(rows):
            if k not in stopped:
                store.set_status(r.id, "finished", prior_seconds + time.perf_counter() - t0)
                store.release(r.id, owner)
    except (OSError, StoreError) as e:  # every epoch is in the checkpoint: a resume ends it
        stop("interrupted")
        why = e.strerror or e if isinstance(e, OSError) else e
        raise RunError(
            f"could not record run {named}'s final weights ({why}); every epoch is in its "
            f"checkpoint: free space, then `ladder run --resume {Path(rows[0].run_dir)}`"
        ) from None
    return [store.run(i) for i in ids]


def _new_row(
    spec: Spec,
    step: Step,
    params: int,
    device: torch.device,
    amp: bool,
    out_dir: Path,
    layout: str,
    identity: str,
    group: str | None,
) -> RunRow:
    run_id = new_run_id(spec)
    commit, dirty = git_info()
    return RunRow(
        run_id,
        spec.step,
        spec.seed,
        spec.protocol,
        spec.recipe.to_dict(),
        params,
        engine_hash(),
        commit,
        dirty,
        torch.__version__,
        str(device),
        int(amp),
        str((out_dir / run_id).resolve()),
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
        run_group=group,
    )


def _remove(folders: list[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


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
    holds, as an interrupted run that can be resumed; so do the runs of its group."""
    try:
        config = json.loads((run_dir / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"{run_dir}: not a run folder (no readable {CONFIG})") from e
    known = {f.name for f in dataclasses.fields(RunRow)}
    row = RunRow(**{k: v for k, v in config.items() if k in known})
    row = dataclasses.replace(row, run_dir=str(run_dir.resolve()))
    ckpt = load_checkpoint(checkpoint_path(row))
    folders = [run_dir]
    if row.run_group:
        try:
            group = json.loads((run_dir.parent / row.run_group / GROUP_FILE).read_text())
            folders = [run_dir.parent / Path(f).name for f in group["runs"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RunError(f"{run_dir}: its group's {GROUP_FILE} is not readable ({e})") from None
    histories = ckpt["state"].get("histories") or [ckpt["state"]["history"]]
    for folder, history in zip(folders, histories, strict=True):
        config = json.loads((folder / CONFIG).read_text())
        member = RunRow(**{k: v for k, v in config.items() if k in known})
        member = dataclasses.replace(
            member, run_dir=str(folder.resolve()), status="interrupted", lease_owner=None, lease_until=None
        )
        try:
            store.run(member.id)
            continue  # this one the store still has
        except StoreError:
            pass
        store.add_run(member)
        store.add_epochs([(member.id, h) for h in history])
        store.set_status(
            member.id, "interrupted", ckpt["wall_seconds"], note=f"re-registered from its folder {folder}"
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


class ModelFileError(RunError, ValueError):
    """A model file that cannot be turned back into its network: one line for the user."""


def load_model(weights: Path, step: Step | None = None) -> tuple[torch.nn.Module, str]:
    """The one model loader: a model file's network rebuilt from its step (`step` when the
    caller holds it, as `ml.fit` does for a step defined in a cell; else built in, a searched
    architecture, or a user's step file whose source is still the one it was trained from),
    then its weights, in eval mode."""
    ckpt = load_checkpoint(weights)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or not ckpt.get("step"):
        raise ModelFileError(f"{weights}: not a mnist-ladder model file")
    step_name, arch = ckpt["step"], ckpt.get("arch")
    stored = sum(t.numel() for t in ckpt["state_dict"].values() if isinstance(t, torch.Tensor))
    if stored > MAX_MODEL_PARAMS:
        raise ModelFileError(
            f"{weights}: {stored:,} parameters, over the {MAX_MODEL_PARAMS:,} a model file may "
            "hold; refused before building its network"
        )
    try:
        if step is not None:
            model = step.build()
        elif arch:
            from ..engine.family import build

            model = build(arch)
        else:
            made_of = {"step_file": ckpt.get("step_file"), "step_hash": ckpt.get("step_hash")}
            model = resolve_step(Spec(step_name, 0, Recipe(), **made_of)).build()
    except (steps.UnknownStep, RunError, ValueError) as e:
        raise ModelFileError(f"{weights}: cannot rebuild {step_name}'s network ({e})") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ModelFileError(
            f"{weights}: weights do not match {step_name}'s architecture ({str(e).splitlines()[0]})"
        ) from e
    return model.eval(), step_name


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
    """Run one spec (`run_tasks` of one)."""
    return run_tasks([task])[0]


def run_tasks(tasks: list[Task]) -> list[tuple[str, str]]:
    """Run the seeds of one step: each finished with this identity is skipped, each
    interrupted one resumed (with its group), and the rest trained together, packed, in one
    process (one after another where the network does not pack). Returns (run id, what
    happened) a seed. Module-level so that worker processes can run it."""
    from ..engine.pack import unpackable

    first = tasks[0]
    if first.options.threads:
        torch.set_num_threads(first.options.threads)
    out: list[tuple[str, str]] = []
    with Store(first.db) as store:
        step = resolve_step(first.spec)
        identity = task_identity(first)
        fresh: list[Spec] = []
        resumed: dict[str, list[RunRow]] = {}
        for task in tasks:
            spec = task.spec
            if done := store.find_finished(spec.step, spec.seed, identity):
                out.append((done.id, "skipped (already finished with this training identity)"))
            elif prior := store.find_resumable(spec.step, spec.seed, identity):
                group = store.group(prior.run_group) if prior.run_group else [prior]
                resumed.setdefault(group[0].id, group)
            else:
                fresh.append(spec)
        name = f"{first.spec.step}"
        say = lambda s: print(f"[{name}] {s}", flush=True)  # noqa: E731
        batches: list[tuple[list[Spec] | None, list[RunRow] | None]] = [(None, g) for g in resumed.values()]
        if len(fresh) > 1 and (why := unpackable(step.build())) is not None:
            say(f"seeds {[s.seed for s in fresh]} run one after another: {why}")
            batches += [([s], None) for s in fresh]
        elif fresh:
            batches.append((fresh, None))
        for specs, prior_rows in batches:
            try:
                if prior_rows is not None:
                    _, specs = resume_target(store, prior_rows[0].id)
                rows = run(specs, store, first.options, resume=prior_rows, log=say)
            except RunClaimed as e:
                out += [(r.id if prior_rows else "-", f"skipped: {e}") for r in prior_rows or specs]
                continue
            what = "resumed and finished" if prior_rows else "finished"
            together = f" (trained together with {len(rows) - 1} more)" if len(rows) > 1 else ""
            out += [(r.id, (what if r.status == "finished" else r.status) + together) for r in rows]
    return out
