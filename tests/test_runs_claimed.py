"""Nothing lost, nothing claimed twice: leases on runs, a store lost under a live run, a full
disk, and reading a store without writing to it."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
import torch

from mnist_ladder import steps
from mnist_ladder.apps import cli
from mnist_ladder.runs import experiment
from mnist_ladder.runs.store import RunClaimed, RunRow, Store, StoreError, new_owner

CPU = torch.device("cpu")


def spec(epochs: int = 3) -> experiment.Spec:
    return experiment.make_spec(steps.get("step1"), seed=3, epochs=epochs, train_limit=1_500, eval_limit=500)


def row(run_id: str, status: str = "running") -> RunRow:
    s = spec()
    return RunRow(
        run_id,
        s.step,
        s.seed,
        s.protocol,
        s.recipe.to_dict(),
        4_572,
        "c0de",
        None,
        None,
        "2.13",
        "cpu",
        0,
        f"/tmp/{run_id}",
        "host",
        os.getpid(),
        "2026-01-01",
        None,
        status,
        None,
    )


def test_a_run_is_claimed_once(tmp_path: Path) -> None:
    with Store(tmp_path / "l.db") as store:
        first, second = new_owner(), new_owner()
        store.add_run(row("a"), first)
        with pytest.raises(RunClaimed, match="being trained by another process"):
            store.claim("a", second)  # two `ladder run --resume a` at once
        with pytest.raises(RunClaimed, match="step1 seed 3"):
            store.add_run(row("b"), second)  # two `ladder ladder` at once, same step and seed
        assert [r.id for r in store.runs()] == ["a"]
        store.claim("a", first)  # the owner renews
        store.release("a", first)
        store.claim("a", second)  # released: another may take it


def test_a_dead_run_is_known_by_its_lapsed_lease_not_its_pid(tmp_path: Path) -> None:
    with Store(tmp_path / "l.db") as store:
        store.add_run(row("a"), new_owner())
        assert store.run("a").effective_status == "running"
        with store.db:  # the process died a minute ago; its pid (ours) is alive and someone else's
            store.db.execute("UPDATE runs SET lease_until=? WHERE id='a'", (time.time() - 1,))
        assert store.run("a").effective_status == "interrupted"
        store.claim("a", new_owner())  # and it can be taken over


def fit_then(action, after: int = 1):
    real_fit = experiment.fit_seeds

    def wrapped(*a, **kw):
        for i, r in enumerate(real_fit(*a, **kw)):
            yield r
            if i + 1 == after:
                action()

    return wrapped


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_store_lost_under_a_live_run_is_said_and_the_run_recovers_from_its_folder(
    tmp_path: Path, mnist, monkeypatch, how: str, capsys
) -> None:
    db = tmp_path / "l.db"

    def lose() -> None:
        db.unlink()
        if how == "replaced":
            Store(db).close()

    monkeypatch.setattr(experiment, "fit_seeds", fit_then(lose))
    with Store(db) as store, pytest.raises(StoreError, match="deleted or replaced") as e:
        experiment.execute(spec(), mnist, store, tmp_path / "runs", device=CPU, amp=False, log=lambda s: None)
    assert "ladder run --resume" in str(e.value)
    monkeypatch.undo()
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert cli.main(["run", "--resume", str(run_dir), "--db", str(db), "--precision", "off"]) == 0
    assert "recorded again from its folder" in capsys.readouterr().out
    with Store(db, create=False) as store:
        (again,) = store.runs()
        assert again.effective_status == "finished"
        assert [e["epoch"] for e in store.epochs(again.id)] == [1, 2, 3]


def test_a_full_disk_stops_the_run_with_one_line_and_it_resumes(tmp_path: Path, mnist, monkeypatch) -> None:
    real_save = torch.save
    calls = {"n": 0}

    def save_then_fill_the_disk(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's checkpoint: half written, then no space
            Path(f).write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save_then_fill_the_disk)
    store = Store(tmp_path / "l.db")
    with pytest.raises(experiment.RunError, match="No space left on device") as e:
        experiment.execute(spec(), mnist, store, tmp_path / "runs", device=CPU, amp=False, log=lambda s: None)
    assert "stops after epoch 1" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.undo()
    (cut,) = store.runs()
    run_dir = Path(cut.run_dir)
    assert [x["epoch"] for x in store.epochs(cut.id)] == [1]  # the epoch with no checkpoint is not stored
    assert not list(run_dir.glob("*.tmp"))
    assert cut.effective_status == "interrupted"  # resumable as it stands
    done = experiment.execute(
        spec(),
        mnist,
        store,
        tmp_path / "runs",
        device=CPU,
        amp=False,
        resume=store.run(cut.id),
        log=lambda s: None,
    )
    assert [x["epoch"] for x in store.epochs(done.id)] == [1, 2, 3]


def test_save_atomic_leaves_no_temporary_when_it_fails(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"the previous checkpoint")

    def fail(obj, f, *a, **kw):
        Path(f).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError):
        experiment.save_torch({"x": 1}, target)
    assert target.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_the_atomic_write_replaces_only_a_regular_file(tmp_path: Path) -> None:
    from mnist_ladder.core.files import OutputPathError, write_atomic

    fifo = tmp_path / "a-fifo"
    os.mkfifo(fifo)  # a special file of this test's own, never the machine's /dev
    with pytest.raises(OutputPathError, match="not a regular file"):
        write_atomic(fifo, b"data")
    assert fifo.is_fifo()
    with pytest.raises(OutputPathError, match="is a directory"):
        write_atomic(tmp_path, "text")
    with pytest.raises(OutputPathError, match="does not exist"):
        write_atomic(tmp_path / "missing" / "f.txt", "text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-fifo"]
    write_atomic(tmp_path / "f.txt", "text")
    assert (tmp_path / "f.txt").read_text() == "text"


def test_reading_a_store_writes_nothing(tmp_path: Path, capsys) -> None:
    db = tmp_path / "l.db"
    with Store(db) as store:
        store.add_run(row("a", status="finished"))
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    with Store(db, create=False) as store:
        assert store.readonly and [r.id for r in store.runs()] == ["a"]
        with pytest.raises(Exception, match="readonly"):
            store.db.execute("DELETE FROM runs")
    assert cli.main(["runs", "--db", str(db)]) == 0 and "a " in capsys.readouterr().out
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
