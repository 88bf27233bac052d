"""Faults a user can cause or meet: nothing lost, nothing claimed twice, no traceback.

The sweep's storage as the README spells it, a worker killed while no other worker is left
to notice, a study read from a fresh clone; unwritable targets, hostile files and sizes; and
every image mode Pillow opens. Tests may run as root, whom permission bits do not stop: an
unwritable target is a path below a regular file, or a read-only bind mount."""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from mnist_ladder import steps
from mnist_ladder.apps import predict
from mnist_ladder.engine import data, family
from mnist_ladder.engine.models import count_parameters
from mnist_ladder.runs import experiment, sweep
from mnist_ladder.runs.store import Store

ROOT = Path(__file__).resolve().parents[1]


def ladder(*args: str, cwd: Path | None = None, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """`ladder ARGS` in a fresh process; `env` adds to the environment (None: removes)."""
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "mnist_ladder", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=env,
        **kw,
    )


def one_line_error(r: subprocess.CompletedProcess, message: str) -> None:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("ladder") and "error: " in r.stderr and message in r.stderr, r.stderr


def readme_url(postgres_url: str) -> str:
    """The README's PostgreSQL URL, word for word, pointed at the test's server."""
    written = re.search(
        r"--storage (postgresql://USER:PASS@DBHOST:5432/sweeps)", (ROOT / "README.md").read_text()
    )
    assert written, "the README no longer shows postgresql://USER:PASS@DBHOST:5432/sweeps"
    host_port = postgres_url.split("@", 1)[1].split("/", 1)[0]
    assert postgres_url.startswith("postgresql://")  # no driver named, as in the README
    return written.group(1).replace("USER:PASS", "ladder:any").replace("DBHOST:5432", host_port)


# ---------------------------------------------------------------- 1, 2: PostgreSQL sweeps


def test_the_readmes_postgresql_url_works(postgres_url: str) -> None:
    url = readme_url(postgres_url)
    name = f"readme-{time.time_ns()}"
    study = optuna.create_study(storage=sweep.storage(url), study_name=name)
    study.enqueue_trial({"x": 1.0})
    assert sweep.load_study(name, url).trials[0].state == optuna.trial.TrialState.WAITING


def states_of(name: str, url: str) -> dict[int, optuna.trial.FrozenTrial]:
    """The trials as stored, read without reaping anything."""
    return {t.number: t for t in optuna.load_study(study_name=name, storage=sweep.storage(url)).trials}


def test_a_dead_workers_trial_is_reaped_by_the_next_command(
    postgres_url: str, tmp_path: Path, mnist, sweep_worker
) -> None:
    """Worker A is killed mid-trial; worker B, alone, starts and finishes its last trial
    before A's grace period (3 heartbeats) ends, so no worker is left to notice. The next
    command, `sweep report`, fails A's trial and queues its retry; a resumed worker runs it.
    The heartbeat is 20 s, so that B fits in the grace period on a busy machine."""
    url, name = readme_url(postgres_url), f"orphan-{time.time_ns()}"
    beat = 20
    same = ["--heartbeat", str(beat), "--fix", "n_convs2=4", "--budget", "100000"]
    victim = sweep_worker(name, url, 3, tmp_path, *same)
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        try:
            running = [
                t
                for t in states_of(name, url).values()  # training: all set up
                if t.state == optuna.trial.TrialState.RUNNING and "threads" in t.user_attrs
            ]
        except KeyError:  # no study yet
            running = []
        if running:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"worker A never started a trial: {victim.communicate()[0]}")
    killed_at, killed = time.time(), running[0].number
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    survivor = sweep_worker(name, url, 1, tmp_path, *same)
    out = survivor.communicate(timeout=600)[0]
    assert survivor.returncode == 0, out
    if time.time() - killed_at > 3 * beat - 5:
        pytest.skip("worker B took past A's grace period: the machine is too busy to stage this")
    assert states_of(name, url)[killed].state == optuna.trial.TrialState.RUNNING  # the bug's state
    time.sleep(max(0.0, killed_at + 3 * beat + 2 - time.time()))  # A's grace period is over

    r = ladder("sweep", "report", name, "--storage", url, "--out", str(tmp_path / "pages"))
    assert r.returncode == 0, r.stderr
    trials = states_of(name, url)
    assert trials[killed].state == optuna.trial.TrialState.FAIL
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in trials.values()]
    assert "1 waiting" in r.stdout  # the retry, said on the page

    resumed = sweep_worker(name, url, 1, tmp_path, *same)
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out
    trials = states_of(name, url)
    retries = [
        t
        for t in trials.values()
        if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed
    ]
    assert len(retries) == 1 and retries[0].params == trials[killed].params
    assert retries[0].state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert {t.state for n, t in trials.items() if n != killed} <= {
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
    }


# ---------------------------------------------------------------- 3: a study from a fresh clone


def fake_study(url: str, name: str, n: int = 6) -> None:
    """A study with `n` complete trials from the real search space (scores made up: what is
    tested is how a study is found and shown, not its numbers)."""
    study = optuna.create_study(storage=url, study_name=name, direction="maximize")
    for i in range(n):
        t = study.ask()
        arch = sweep.arch_of(sweep.suggest(t, {}))
        t.set_user_attr("arch", arch)
        t.set_user_attr("params", count_parameters(family.build(arch)))
        study.tell(t, 97.123456789 + i / 7)


def test_a_reference_study_is_reported_from_a_fresh_clone(tmp_path: Path) -> None:
    ref, work = tmp_path / "reference", tmp_path / "work"
    ref.mkdir()
    work.mkdir()
    fake_study(f"sqlite:///{ref / 'sweeps.db'}", "budget8k")
    before = (ref / "sweeps.db").read_bytes()
    env = {"MNIST_LADDER_REFERENCE": str(ref), "MNIST_LADDER_DB": None}
    r = ladder("sweep", "report", "budget8k", cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    page = work / "runs" / "sweep-budget8k.md"
    assert sorted(p.name for p in page.parent.iterdir()) == ["sweep-budget8k-pareto.png", "sweep-budget8k.md"]
    text = page.read_text()
    for link in re.findall(r"\]\(([^)]+)\)", text):  # links only what it wrote, beside it
        assert (page.parent / link).is_file(), link
    assert not re.search(r"\d\.\d{7,}", text), text  # no raw floats (97.123456789)
    assert re.search(r"\| \d{1,2},\d{3} \| 9\d\.\d\d \|", text), text  # 1,234 params, 97.12 %
    assert (ref / "sweeps.db").read_bytes() == before
    # --from-trial finds it too, and --out chooses where a page goes
    r = ladder("run", "--from-trial", "budget8k:99", cwd=work, env=env)
    one_line_error(r, "has no trial 99")
    r = ladder("sweep", "report", "budget8k", "--out", str(tmp_path / "elsewhere"), cwd=work, env=env)
    assert r.returncode == 0 and (tmp_path / "elsewhere" / "sweep-budget8k.md").is_file()


def test_reading_a_missing_study_creates_no_database(tmp_path: Path) -> None:
    env = {"MNIST_LADDER_REFERENCE": str(tmp_path / "ref"), "MNIST_LADDER_DB": None}
    r = ladder("sweep", "report", "nope", cwd=tmp_path, env=env)
    one_line_error(r, "no study 'nope'")
    assert "runs/sweeps.db" in r.stderr and str(tmp_path / "ref" / "sweeps.db") in r.stderr
    r = ladder("sweep", "report", "nope", "--storage", f"sqlite:///{tmp_path / 'x.db'}")
    one_line_error(r, "no study 'nope'")
    assert list(tmp_path.rglob("*.db")) == []


@pytest.mark.parametrize(
    "args",
    [
        ["sweep", "report", "../escape"],
        ["sweep", "--study", "a/b"],
        ["sweep", "report", ".."],
        ["run", "--from-trial", "../x:1"],
    ],
)
def test_a_study_name_is_never_a_path(tmp_path: Path, args: list[str]) -> None:
    out = tmp_path / "out"
    r = ladder(*args, "--out", str(out), "--storage", f"sqlite:///{tmp_path / 's.db'}")
    one_line_error(r, "study name")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 10: one line, nothing half-written


@pytest.fixture
def model_and_digit(mnist, tmp_path: Path) -> tuple[Path, Path]:
    """An (untrained) Step 6 model file and a real test digit as a PNG."""
    torch.manual_seed(0)
    model = tmp_path / "model.pt"
    torch.save({"step": "step6", "state_dict": steps.get("step6").build().state_dict()}, model)
    digit = tmp_path / "digit.png"
    Image.fromarray(mnist.test_images[0].numpy()).save(digit)
    return model, digit


def test_unwritable_show_folder_is_one_line(model_and_digit, tmp_path: Path) -> None:
    model, digit = model_and_digit
    (tmp_path / "afile").write_text("a file, not a folder")
    r = ladder("predict", str(model), str(digit), "--show", str(tmp_path / "afile" / "sub"))
    one_line_error(r, "cannot write there")
    assert r.stdout == ""  # refused before predicting anything


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_to_an_unwritable_path_or_a_folder_is_one_line(
    model_and_digit, tmp_path: Path, fmt: str
) -> None:
    model, _ = model_and_digit
    (tmp_path / "afile").write_text("a file, not a folder")
    r = ladder("export", str(model), "--format", fmt, "--out", str(tmp_path / "afile" / "m.out"))
    one_line_error(r, "cannot write")
    (tmp_path / "folder").mkdir()
    r = ladder("export", str(model), "--format", fmt, "--out", str(tmp_path / "folder"))
    one_line_error(r, "is a folder")
    assert list((tmp_path / "folder").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "digit.png", "folder", "model.pt"]


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` unwritable, even to root: a read-only bind mount of itself (root), or its
    permission bits (anyone else)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"root without mount rights: cannot make a read-only folder ({mounted.stderr})")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_read_only_cache_holding_a_bad_file_is_one_line(tmp_path: Path) -> None:
    """The cache cannot drop its bad file nor take the good one: one line, nothing left."""
    cache, idx = tmp_path / "cache", tmp_path / "idx"
    shutil.copytree(data.fetch(), idx)  # a good source to fall back on
    shutil.copytree(idx, cache)
    (cache / "t10k-labels-idx1-ubyte").write_bytes(b"\0" * 10)  # corrupted
    listing = sorted(p.name for p in cache.iterdir())
    with read_only(cache):
        r = ladder("data", "--data-dir", str(cache), "--idx-dir", str(idx), env={"MNIST_LADDER_OFFLINE": "1"})
        assert sorted(p.name for p in cache.iterdir()) == listing
    progress = [ln for ln in r.stderr.splitlines() if not ln.startswith("[data]")]
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert len(progress) == 1 and "cannot write the MNIST cache" in progress[0], r.stderr


def test_model_file_with_a_huge_architecture_is_refused_before_building(
    model_and_digit, tmp_path: Path
) -> None:
    _, digit = model_and_digit
    huge = {
        "convs1": [10**6],
        "transition": 10**6,
        "convs2": [10**6, 10**6],
        "head": 0,
        "dropout": 0.0,
    }  # about 76 TB of float32 weights, were it built
    torch.save({"step": "trial-x", "arch": huge, "state_dict": {}}, tmp_path / "huge.pt")
    r = ladder("predict", str(tmp_path / "huge.pt"), str(digit))
    one_line_error(r, "over the family's limit")
    torch.save(
        {"step": "trial-x", "arch": {"convs1": "x", "transition": 1, "convs2": [1]}, "state_dict": {}},
        tmp_path / "odd.pt",
    )
    one_line_error(ladder("predict", str(tmp_path / "odd.pt"), str(digit)), "not an architecture")


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unsafe_checkpoint_is_refused_without_torchs_advice(model_and_digit, tmp_path: Path) -> None:
    _, digit = model_and_digit
    torch.save({"step": "step6", "state_dict": {}, "x": RunsCode()}, tmp_path / "evil.pt")
    r = ladder("predict", str(tmp_path / "evil.pt"), str(digit))
    one_line_error(r, "could run code when loaded; refused")
    assert "weights_only" not in r.stderr and "pwned" not in r.stdout


def test_a_reader_that_goes_away_ends_the_output_quietly() -> None:
    """`ladder list | head -1`: the pipe closes before ladder writes."""
    p = subprocess.Popen(
        [sys.executable, "-m", "mnist_ladder", "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    p.stdout.close()
    err = p.stderr.read()
    p.wait(timeout=120)
    assert err == "" and p.returncode == 1, err


# ---------------------------------------------------------------- 11: resource limits


@pytest.mark.parametrize("command", [["run", "step1"], ["ladder"], ["sweep", "--study", "t"]])
def test_more_threads_than_cpus_is_one_line(command: list[str]) -> None:
    r = ladder(*command, "--threads", str((os.cpu_count() or 1) + 1))
    assert r.returncode == 2 and "CPU(s)" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_sweep_trials_run_with_the_threads_asked_for(tmp_path: Path, mnist) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    r = ladder(
        "sweep",
        "--study",
        "t",
        "--trials",
        "1",
        "--threads",
        "1",
        "--storage",
        url,
        "--epochs",
        "1",
        "--train-limit",
        "300",
        "--eval-limit",
        "100",
        "--budget",
        "100000",
    )
    assert r.returncode == 0, r.stderr
    (trial,) = sweep.load_study("t", url).trials
    assert trial.user_attrs["threads"] == 1


def test_a_gzip_bomb_in_the_idx_folder_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    name = "train-images-idx3-ubyte"
    with gzip.open(tmp_path / f"{name}.gz", "wb", compresslevel=1) as f:
        chunk = b"\0" * (1 << 20)
        for _ in range(400):  # 400 MB from a file of under 2 MB
            f.write(chunk)
    assert (tmp_path / f"{name}.gz").stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(data.DataError, match="expands past"):
            data.from_folder(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * data.FILES[name][0], peak  # about the canonical size, not 400 MB


# ---------------------------------------------------------------- 12: every image a user may have


def image_modes(digit: np.ndarray) -> dict[str, Image.Image]:
    """One MNIST digit (white ink, 0..255) in the modes a user's files come in."""
    ink = digit.astype(np.float32) / 255.0
    h, w = digit.shape
    none, full = np.zeros((h, w), np.uint8), np.full((h, w), 255, np.uint8)

    def rgba(color: tuple[int, int, int]) -> Image.Image:  # that colour, drawn by alpha alone
        return Image.merge(
            "RGBA", [Image.fromarray(np.full((h, w), c, np.uint8)) for c in color] + [Image.fromarray(digit)]
        )

    # a palette image's transparency is all or nothing: ink in one colour, hard edges
    palette = Image.frombytes("P", (w, h), (digit > 96).astype(np.uint8).tobytes())
    palette.putpalette([255, 255, 255, 30, 30, 160])  # 0: (transparent) white, 1: dark blue
    palette.info["transparency"] = 0
    paper_l = Image.fromarray(255 - digit)  # dark ink on white paper, opaque alpha
    return {
        "I;16": Image.fromarray(digit.astype(np.uint16) * 257),
        "I": Image.fromarray((ink * 1_000_000).astype(np.int32)),
        "P+transparency": palette,
        "LA black ink": Image.merge("LA", [Image.fromarray(none), Image.fromarray(digit)]),
        "LA opaque paper": Image.merge("LA", [paper_l, Image.fromarray(full)]),
        "RGBA black": rgba((0, 0, 0)),
        "RGBA white": rgba((255, 255, 255)),
        "RGBA yellow": rgba((255, 220, 0)),
        "RGBA blue": rgba((20, 40, 230)),
        "PA": rgba((0, 0, 0)).convert("PA"),  # (Pillow's LA -> PA drops the alpha)
    }


def test_every_image_mode_gives_the_plain_digits_prediction(trained_step6, mnist, tmp_path: Path) -> None:
    db, row = trained_step6
    with Store(db, create=False) as store:
        model, _ = experiment.load_model(predict.resolve_run(row.id, store))
    for i in range(10):
        big = Image.fromarray(mnist.test_images[i].numpy()).resize((112, 112), Image.Resampling.BICUBIC)
        plain = predict.mnist_style(predict.to_gray(big))
        variants = image_modes(np.asarray(big))
        files = []
        for label, img in variants.items():
            if img.mode in ("P", "LA", "RGBA", "I;16"):  # through a file, as a user gives it
                path = tmp_path / f"{i}-{label.replace(' ', '_')}.png"
                img.save(path, **({"transparency": 0} if img.mode == "P" else {}))
                files.append(path)
                assert Image.open(path).mode == img.mode
        seen = {label: predict.mnist_style(predict.to_gray(img)) for label, img in variants.items()}
        probs = predict.predict_arrays(model, [plain, *seen.values()])
        digits = dict(zip(["plain", *seen], probs.argmax(1).tolist(), strict=True))
        assert set(digits.values()) == {digits["plain"]}, (i, digits)
        for label, x in seen.items():  # the same image for the model, but for hard edges
            limit = 0.1 if label.startswith("P+") else 0.02
            assert np.abs(x - plain).mean() < limit, (i, label, np.abs(x - plain).mean())
        preds, problems = predict.predict_files(model, files)
        assert problems == [] and {p.digit for p in preds} == {digits["plain"]}


def test_a_folders_subfolders_are_reported_not_skipped_silently(model_and_digit, tmp_path: Path) -> None:
    model, digit = model_and_digit
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    shutil.copy(digit, folder / "one.png")
    r = ladder("predict", str(model), str(folder))
    assert r.returncode == 0, r.stderr
    assert f"{folder / 'more'}: skipped, a folder" in r.stderr
    assert "one.png" in r.stdout
