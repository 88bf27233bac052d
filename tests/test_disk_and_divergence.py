"""A full disk at every point a run writes is one line and leaves the run resumable; a run
whose loss becomes NaN or infinite stops there and is stored as diverged, never a result."""

from __future__ import annotations

import errno
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mnist_ladder import steps
from mnist_ladder.core.errors import LadderError
from mnist_ladder.runs import experiment
from mnist_ladder.runs import store as store_module
from mnist_ladder.runs.results import run_sets
from mnist_ladder.runs.store import Store

CPU = torch.device("cpu")


def quick_spec(epochs: int = 2) -> experiment.Spec:
    return experiment.make_spec(steps.get("step1"), seed=1, epochs=epochs, train_limit=600, eval_limit=300)


def execute(spec, mnist, store, out: Path, resume=None):
    return experiment.execute(
        spec, mnist, store, out, device=CPU, amp=False, resume=resume, log=lambda s: None, layout="cl"
    )


def full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


# Each point a run writes, and the call of it that fails (2: the second epoch's)
POINTS = {
    "config": ("write_atomic", experiment.CONFIG, 1),
    "first checkpoint": ("save_torch", experiment.CHECKPOINT, 1),
    "checkpoint": ("save_torch", experiment.CHECKPOINT, 2),
    "metrics": ("write_atomic", experiment.METRICS, 2),
    "final weights": ("save_torch", experiment.WEIGHTS, 1),
    "epoch row": ("store", "add_epochs", 2),
    "weights row": ("store", "put_weights", 1),
    "finishing row": ("store", "set_status", 1),
}


@pytest.mark.parametrize("point", list(POINTS))
def test_a_full_disk_anywhere_is_one_line_and_the_run_resumes(
    point: str, tmp_path: Path, mnist, monkeypatch
) -> None:
    kind, name, failing_call = POINTS[point]
    calls = {"n": 0}

    def hit() -> bool:
        calls["n"] += 1
        return calls["n"] == failing_call

    if kind != "store":  # the run's own file writer (save_torch writes through write_atomic)
        real_writer = getattr(experiment, kind)

        def writer(*args, **kwargs):
            path = args[0] if kind == "write_atomic" else args[1]
            if Path(path).name == name and hit():
                raise full()
            return real_writer(*args, **kwargs)

        monkeypatch.setattr(experiment, kind, writer)
    else:
        real = getattr(Store, name)

        def faulty(self, *args, **kwargs):
            # set_status: only the call that finishes the run fails
            if (name != "set_status" or args[1] == "finished") and hit():
                raise sqlite3.OperationalError("database or disk is full")
            return real.__wrapped__(self, *args, **kwargs)

        monkeypatch.setattr(Store, name, store_module._store_errors(faulty))

    db, out = tmp_path / "ladder.db", tmp_path / "runs"
    spec = quick_spec()
    with Store(db) as store, pytest.raises(LadderError) as failure:
        execute(spec, mnist, store, out)
    message = str(failure.value)
    assert "\n" not in message and ("space" in message or "full" in message), message
    monkeypatch.undo()  # space again

    with Store(db) as store:
        if point == "config":  # nothing trained yet: nothing recorded, nothing left behind
            assert store.runs() == [] and not any(out.iterdir())
            row = execute(spec, mnist, store, out)
        else:
            (left,) = store.runs()
            assert left.effective_status == "interrupted"
            assert all(p.stat().st_size > 0 for p in Path(left.run_dir).iterdir())
            (again,), (again_spec,) = experiment.resume_target(store, left.run_dir)
            row = execute(again_spec, mnist, store, out, resume=again)
        assert row.status == "finished"
        assert [e["epoch"] for e in store.epochs(row.id)] == [1, 2]
        assert store.weights(row.id)


class NaNAfter(nn.Module):
    """A model whose output turns to NaN at its 3rd forward pass in training."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
        out = self.layer(x)
        return out * float("nan") if self.training and self.calls >= 3 else out


def test_a_diverging_run_stops_at_once_and_is_never_a_result(tmp_path: Path, mnist) -> None:
    step = steps.Step("nanstep", "turns to NaN", build=NaNAfter, recipe=steps.get("step1").recipe)
    spec = experiment.make_spec(step, seed=1, epochs=2, train_limit=600, eval_limit=300)
    with Store(tmp_path / "ladder.db") as store:
        with pytest.raises(
            LadderError, match="diverged: the training loss became NaN or infinite at epoch 1, batch 3 of"
        ):
            experiment.execute(
                spec, mnist, store, tmp_path / "runs", device=CPU, amp=False, step=step, log=lambda s: None
            )
        (row,) = store.runs()
        assert row.status == "diverged" and "epoch 1, batch 3" in row.note
        assert store.epochs(row.id) == [] and store.weights(row.id) is None
        assert run_sets(store, step) == []  # never a step's result, a `best` or a verdict's input


def test_a_huge_learning_rate_is_one_line_and_non_zero(tmp_path: Path) -> None:
    """The CLI, on a user's step file with lr 1e4: diverged, said in one line, exit non-zero."""
    made = subprocess.run(
        [sys.executable, "-m", "mnist_ladder", "new", "hot"], cwd=tmp_path, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    source = (tmp_path / "steps" / "hot.py").read_text()
    source, n = re.subn(r"(?m)^(\s+(?:max_)?lr=)[0-9.e-]+", r"\g<1>1e4", source)
    assert n == 2
    (tmp_path / "steps" / "hot.py").write_text(source)
    r = subprocess.run(
        [sys.executable, "-m", "mnist_ladder", "run", "hot", "--epochs", "1", "--train-limit", "2000"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("ladder:")]
    assert len(errors) == 1 and "diverged" in errors[0] and "Traceback" not in r.stderr
    runs = subprocess.run(
        [sys.executable, "-m", "mnist_ladder", "runs"], cwd=tmp_path, capture_output=True, text=True
    )
    assert "diverged" in runs.stdout
    shutil.rmtree(tmp_path / "runs")
