"""The corrupted set (runs/corrupted.py): each corruption deterministic, bounded and pinned by a
committed checksum; a trained model scores lower under each family; a damaged cache is made
again; a store without the robustness table reads as not measured; `ladder evaluate` and
`ladder compare` use it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_ladder.engine.train import normalize, predict, to_unit
from mnist_ladder.runs import corrupted, experiment
from mnist_ladder.runs.store import Store

GOLDEN = Path(__file__).parent / "golden" / "corrupted.json"


@pytest.mark.parametrize("name", list(corrupted.CORRUPTIONS))
def test_each_corruption_is_deterministic_bounded_and_pinned(name: str, mnist) -> None:
    images = mnist.test_images[:8].numpy()
    once = corrupted.corrupt(name, images, "test")
    assert once.dtype == np.uint8 and once.shape == images.shape
    assert np.array_equal(once, corrupted.corrupt(name, images, "test"))  # the same bytes twice
    assert not np.array_equal(once, images)  # it corrupts
    # image k depends on its index alone: the 4th made on its own is the 4th made among 8
    assert np.array_equal(corrupted.corrupt(name, images[3:4], "test", first=3)[0], once[3])
    pinned = json.loads(GOLDEN.read_text())
    assert pinned["version"] == corrupted.VERSION
    assert hashlib.sha256(once.tobytes()).hexdigest() == pinned["sha256"][name]


def test_the_float_result_of_every_corruption_stays_in_the_pixel_range(mnist) -> None:
    x = mnist.test_images[0].numpy() / 255.0
    for i, fn in enumerate(corrupted.CORRUPTIONS.values()):
        y = fn(x.copy(), np.random.default_rng([corrupted.SEED, i, 0, 0]))
        assert y.shape == (28, 28) and np.isfinite(y).all()
        # outside [0, 1] only where `corrupt` clips (brightness and noise overshoot by design)
        assert y.min() >= -1.0 and y.max() <= 2.0


def test_a_trained_model_scores_lower_under_every_family(trained_step6, mnist) -> None:
    db, row = trained_step6
    with Store(db, create=False) as store:
        model, _ = experiment.load_model(experiment.weights_file(row, store))
    n = 400
    images, labels = corrupted.load(mnist, "test", n)
    y = torch.from_numpy(labels).long()

    def accuracy(u8: np.ndarray) -> float:
        return (
            100.0
            * (predict(model, normalize(to_unit(torch.from_numpy(u8)))).argmax(1) == y).float().mean().item()
        )

    clean = accuracy(mnist.test_images[:n].numpy())
    assert clean > 95
    by_name = dict(zip(corrupted.CORRUPTIONS, map(accuracy, images), strict=True))
    for family, names in corrupted.FAMILIES.items():
        mean = sum(by_name[k] for k in names) / len(names)
        assert mean < clean, (family, mean, clean)


def test_a_damaged_cache_is_made_again(mnist, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MNIST_LADDER_DATA", str(tmp_path))
    few = dataclasses.replace(mnist, test_images=mnist.test_images[:20], test_labels=mnist.test_labels[:20])
    said: list[str] = []
    first, labels = corrupted.load(few, "test", log=said.append)
    path = corrupted.cache_path("test")
    assert path.is_file() and first.shape == (15, 20, 28, 28) and list(labels) == few.test_labels.tolist()
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the images
    path.write_bytes(bytes(data))
    again, _ = corrupted.load(few, "test", log=said.append)
    assert any("damaged" in s for s in said) and np.array_equal(again, first)
    assert corrupted.load(few, "test", log=said.append)[0].shape == first.shape  # read, checked
    path.with_suffix(".sha256").unlink()  # a missing checksum: made again too
    assert np.array_equal(corrupted.load(few, "test", log=said.append)[0], first)


def test_a_store_without_the_table_reads_as_not_measured(tmp_path: Path, trained_step6) -> None:
    db, row = trained_step6
    copy = tmp_path / "old.db"
    copy.write_bytes(db.read_bytes())
    with Store(copy, create=False) as store:  # read-only: nothing made
        assert store.robustness(row.id) is None
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == 2
    with Store(copy) as store:
        store.put_robustness(row.id, "corrupted", "test", {"shot_noise": 90.0, "stripe": 50.0}, 100)
        assert store.robustness(row.id) == {"shot_noise": 90.0, "stripe": 50.0}
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == 3


def ladder(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mnist_ladder", *args], cwd=cwd, capture_output=True, text=True
    )


def test_evaluate_then_compare_prints_the_robustness_difference(tmp_path: Path) -> None:
    for step in ("step1", "step3"):  # three seeds each, trained together
        r = ladder(
            "run",
            step,
            "--seeds",
            "3",
            "--epochs",
            "1",
            "--train-limit",
            "1000",
            "--eval-limit",
            "200",
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
    mine = ("step1@runs/ladder.db", "step3@runs/ladder.db")  # not the reference runs of the steps
    before = ladder("compare", *mine, cwd=tmp_path)
    assert "Robustness (corrupted set): not measured" in before.stdout, before.stdout
    for step in ("step1", "step3"):
        r = ladder("evaluate", step, cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.count("corrupted test mean") == 3, r.stdout + r.stderr
    after = ladder("compare", *mine, "--json", cwd=tmp_path)
    found = json.loads(after.stdout)["robustness"]
    assert set(found["a"]) == {"1", "2", "3"} and found["verdict"] and found["interval"]
    text = ladder("compare", *mine, cwd=tmp_path).stdout
    assert "Robustness, mean accuracy on the corrupted set (3 and 3 seeds)" in text


def test_a_run_without_weights_is_skipped_with_the_reason(tmp_path: Path, trained_step6) -> None:
    db, row = trained_step6
    copy = tmp_path / "l.db"
    copy.write_bytes(db.read_bytes())
    with Store(copy) as store:
        store.db.execute("DELETE FROM weights")
        store.db.execute("UPDATE runs SET run_dir=?", (str(tmp_path / "gone"),))
        store.db.commit()
    r = ladder("evaluate", row.id, "--db", str(copy), cwd=tmp_path)
    assert r.returncode == 0 and "skipped: no weights" in r.stdout, r.stdout + r.stderr


def test_the_suite_is_outside_training_identity() -> None:
    """runs/corrupted.py is no engine source: editing it retrains nothing."""
    from mnist_ladder.engine.identity import ENGINE_DIR

    assert not Path(corrupted.__file__).resolve().is_relative_to(ENGINE_DIR)
