"""Checkpoints and resume: an interrupted run continues to exactly the same numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import ctrl_c_after_epochs
from mnist_ladder import steps
from mnist_ladder.runs import experiment
from mnist_ladder.runs.store import RunRow, Store

CPU = torch.device("cpu")


def spec(epochs: int = 3, step: str = "step6") -> experiment.Spec:
    return experiment.make_spec(steps.get(step), seed=7, epochs=epochs, train_limit=2_000, eval_limit=500)


@pytest.mark.parametrize("step", ["step6", "step7"])  # step7: the weight average resumes too
def test_resumed_run_equals_uninterrupted_run(tmp_path: Path, mnist, monkeypatch, step: str) -> None:
    store = Store(tmp_path / "l.db")
    run_spec = spec(3, step)

    full = experiment.execute(run_spec, mnist, store, tmp_path, device=CPU, amp=False, log=lambda s: None)
    with ctrl_c_after_epochs(monkeypatch), pytest.raises(KeyboardInterrupt):
        experiment.execute(run_spec, mnist, store, tmp_path, device=CPU, amp=False, log=lambda s: None)
    (cut,) = [r for r in store.runs() if r.id != full.id]
    assert cut.effective_status == "interrupted" and len(store.epochs(cut.id)) == 2
    resumed = experiment.execute(
        run_spec, mnist, store, tmp_path, device=CPU, amp=False, resume=cut, log=lambda s: None
    )
    a, b = store.epochs(full.id), store.epochs(resumed.id)
    keys = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc"]
    assert [[e[k] for k in keys] for e in a] == [[e[k] for k in keys] for e in b]
    w1 = torch.load(Path(full.run_dir) / "model.pt", weights_only=True)["state_dict"]
    w2 = torch.load(Path(resumed.run_dir) / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_resume_writes_back_epochs_the_store_lost(tmp_path: Path, mnist, monkeypatch) -> None:
    store = Store(tmp_path / "l.db")
    run_spec = spec(3)
    real_add_epochs = store.add_epochs
    monkeypatch.setattr(
        store, "add_epochs", lambda epochs: real_add_epochs([(i, e) for i, e in epochs if e["epoch"] == 1])
    )  # epochs 2 and 3 never reach the store
    real_set_status = store.set_status
    monkeypatch.setattr(store, "set_status", lambda *a, **kw: None)  # nor does 'finished'
    row = experiment.execute(run_spec, mnist, store, tmp_path, device=CPU, amp=False, log=lambda s: None)
    monkeypatch.setattr(store, "add_epochs", real_add_epochs)
    monkeypatch.setattr(store, "set_status", real_set_status)
    assert len(store.epochs(row.id)) == 1
    lost = store.run(row.id)
    done = experiment.execute(
        run_spec, mnist, store, tmp_path, device=CPU, amp=False, resume=lost, log=lambda s: None
    )
    assert done.status == "finished"
    history = json.loads((Path(row.run_dir) / "metrics.json").read_text())
    assert [e["test_acc"] for e in store.epochs(row.id)] == [h["test_acc"] for h in history]
    assert len(history) == 3


def test_val_only_run_never_evaluates_the_test_set(tmp_path: Path, mnist) -> None:
    s = experiment.make_spec(
        steps.get("step7"), seed=1, epochs=1, val=True, train_limit=1_000, eval_limit=300, test=False
    )
    assert s.protocol.startswith("val-only")
    store = Store(tmp_path / "l.db")
    row = experiment.execute(s, mnist, store, tmp_path, device=CPU, amp=False, log=lambda s: None)
    (epoch,) = store.epochs(row.id)
    assert epoch["test_acc"] is None and epoch["test_loss"] is None
    assert epoch["val_acc"] is not None and epoch["val_loss"] > 0  # validation was evaluated
    with pytest.raises(ValueError):
        experiment.make_spec(steps.get("step7"), seed=1, test=False)  # no val: nothing to evaluate


def test_crafted_checkpoint_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "checkpoint.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(experiment.RunError, match="not a loadable checkpoint"):
        experiment.load_checkpoint(path)


def test_engine_hash_is_the_imported_sources_and_ignores_later_edits(tmp_path: Path, monkeypatch) -> None:
    from mnist_ladder.engine import identity

    imported = identity.engine_hash()
    assert imported == identity._hash_engine() and len(imported) == 16  # this tree, as imported
    copy = tmp_path / "engine"
    shutil.copytree(identity.ENGINE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(identity, "ENGINE_DIR", copy)
    assert identity._hash_engine() == imported
    (copy / "kernels.c").write_text((copy / "kernels.c").read_text() + "\n/* edited */\n")
    assert identity._hash_engine() != imported  # the C kernels are engine sources...
    assert identity.engine_hash() == imported  # ...and an edit is not what this process runs


def test_a_steps_fingerprint_leaves_its_prose_out() -> None:
    from mnist_ladder.engine.identity import fingerprint

    source = (STEP6_FILE := Path(steps.step6_lr_scheduler.__file__)).read_text()
    prose = source.replace("LR scheduler + one more 1x1 after GAP", "A new title").replace(
        "The model still under-fits", "Edited analysis: the model under-fits"
    )
    assert prose != source and fingerprint(prose) == fingerprint(source)
    assert fingerprint(source + "\n# a comment\n") == fingerprint(source)
    assert fingerprint(source.replace("dropout=0.03", "dropout=0.05")) != fingerprint(source)
    assert fingerprint(source.replace("lr=0.015, ", "lr=0.02, ")) != fingerprint(source)
    assert STEP6_FILE.name == "step6_lr_scheduler.py"


def test_a_recipe_stored_before_a_field_was_added_still_matches() -> None:
    recipe = steps.get("step6").recipe
    stored = recipe.to_dict()
    for name in ("elastic", "elastic_grid"):  # fields added in session 3
        del stored["augment"][name]
    assert recipe.matches(stored)
    assert not recipe.matches({**stored, "epochs": 5})
    assert not recipe.matches({**stored, "a_field_since_removed": 1})
    assert not steps.get("step5").recipe.matches(stored)


def test_resume_picks_the_interrupted_attempt_that_got_furthest(tmp_path: Path) -> None:
    recipe = steps.get("step6").recipe

    def attempt(store: Store, run_id: str, started: str, epochs: int) -> None:
        store.add_run(
            RunRow(
                run_id,
                "step6",
                1,
                "test",
                recipe.to_dict(),
                6720,
                "c0de",
                None,
                None,
                "2.13.0",
                "cpu",
                0,
                str(tmp_path / run_id),
                "host",
                1,
                started,
                None,
                "interrupted",
                None,
                training_id="1d",
            )
        )
        for e in range(1, epochs + 1):
            store.add_epoch(run_id, {"epoch": e, "test_acc": 98.0})

    with Store(tmp_path / "ladder.db") as store:
        attempt(store, "far", "2026-01-01T10:00:00", epochs=10)
        attempt(store, "near", "2026-01-01T11:00:00", epochs=2)  # later, but behind
        assert store.find_resumable("step6", 1, "1d").id == "far"
        attempt(store, "farther", "2026-01-01T12:00:00", epochs=11)
        assert store.find_resumable("step6", 1, "1d").id == "farther"
        assert store.find_resumable("step6", 2, "1d") is None


def test_a_finished_run_s_weights_outlive_its_run_folder(tmp_path: Path, mnist, monkeypatch) -> None:
    from mnist_ladder.apps import predict

    monkeypatch.setenv("MNIST_LADDER_DATA", str(tmp_path / "cache"))  # restored copies go here
    store = Store(tmp_path / "l.db")
    row = experiment.execute(
        spec(1, "step7"), mnist, store, tmp_path / "runs", device=CPU, amp=False, log=lambda s: None
    )
    saved = (Path(row.run_dir) / "model.pt").read_bytes()
    assert store.weights(row.id) == saved
    shutil.rmtree(row.run_dir)  # a fresh clone has the store, not the run folders
    restored = predict.resolve_run(row.id, store)
    assert restored == tmp_path / "cache" / "weights" / f"{row.id}.pt"
    assert restored.read_bytes() == saved and not Path(row.run_dir).exists()
    model, step = experiment.load_model(restored)
    assert step == "step7" and sum(p.numel() for p in model.parameters()) == row.params


def test_weights_from_the_store_are_checked_and_never_written_where_a_row_says(
    tmp_path: Path, mnist, monkeypatch
) -> None:
    from mnist_ladder.apps import predict

    monkeypatch.setenv("MNIST_LADDER_DATA", str(tmp_path / "cache"))
    store = Store(tmp_path / "l.db")
    row = experiment.execute(
        spec(1, "step7"), mnist, store, tmp_path / "runs", device=CPU, amp=False, log=lambda s: None
    )
    elsewhere = tmp_path / "somewhere" / "else"
    with store.db:  # a crafted row: a relative run_dir and bytes that are no model
        store.db.execute("UPDATE runs SET run_dir=? WHERE id=?", ("../somewhere/else", row.id))
        store.db.execute("UPDATE weights SET data=? WHERE run_id=?", (b"not a model", row.id))
    with pytest.raises(predict.PredictError, match="not a loadable model"):
        predict.resolve_run(row.id, store)
    assert not elsewhere.exists() and not (tmp_path / "cache" / "weights").exists()
