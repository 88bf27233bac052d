"""The command line as a user meets it: real processes, real exit codes, real files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_ladder.apps import cli


def ladder(*args: str, cwd: Path, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mnist_ladder", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=check,
        timeout=600,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "step99"], "valid steps: step0"),
        (["run", "step6", "--epochs", "0"], "must be positive"),
        (["run", "step6", "--seed", "-1"], "a seed is 0 or more"),
        (["run", "step6", "--batch-size", "-5"], "must be positive"),
        (["run", "step6", "--threads", "0"], "must be positive"),
        (["run", "step6", "--device", "tpu"], "unknown device"),
        (["run", "step6", "--precision", "fp8"], "unknown precision"),
        (["summary", "nope"], "unknown step"),
        (["run", "step7.nope"], "variants: step7."),
        (["show", "no-such-run"], "no "),
    ],
)
def test_bad_input_is_one_line_nonzero_and_writes_nothing(tmp_path: Path, args, message) -> None:
    r = (
        ladder(*args, "--db", str(tmp_path / "runs" / "x.db"), cwd=tmp_path)
        if args[0] in ("run", "show")
        else ladder(*args, cwd=tmp_path)
    )
    assert r.returncode != 0
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists() or args[0] == "show"


def test_cuda_asked_for_but_absent(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = ladder("run", "step6", "--device", "cuda", cwd=tmp_path)
    assert r.returncode == 2 and "not available" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


def test_list_and_summary(capsys) -> None:
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(f"step{i}" in out for i in range(7)) and "6,720" in out
    assert cli.main(["summary", "step6"]) == 0
    assert "total parameters: 6,720" in capsys.readouterr().out


def test_run_writes_metrics_weights_and_store(tmp_path: Path, mnist) -> None:
    r = ladder(
        "run",
        "step6",
        "--epochs",
        "2",
        "--train-limit",
        "2000",
        "--eval-limit",
        "1000",
        "--seed",
        "5",
        "--threads",
        "1",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "CPU threads: 1)" in r.stdout
    assert "epoch  2/2" in r.stdout and "total parameters: 6,720" in r.stdout
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert (run_dir / "model.pt").is_file() and (run_dir / "checkpoint.pt").is_file()
    db = sqlite3.connect(tmp_path / "runs" / "ladder.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    status, params, seed = db.execute("SELECT status, params, seed FROM runs").fetchone()
    assert (status, params, seed) == ("finished", 6720, 5)
    rows = db.execute("SELECT epoch, test_acc FROM epochs ORDER BY epoch").fetchall()
    assert [e for e, _ in rows] == [1, 2]
    assert rows[-1][1] == pytest.approx(metrics[-1]["test_acc"])
    shown = ladder("show", run_dir.name, cwd=tmp_path)
    assert shown.returncode == 0 and "epoch  2/2" in shown.stdout


def wait_for_epochs(db: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        if db.exists():
            try:
                count = sqlite3.connect(db).execute("SELECT COUNT(*) FROM epochs").fetchone()[0]
            except sqlite3.OperationalError:
                count = 0
            if count >= n:
                return
        time.sleep(0.2)
    raise TimeoutError


def start_run_past_its_first_epoch(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """A short Step 6 run in its own process, once its first epoch is stored: (process, store)."""
    args = ["run", "step6", "--epochs", "4", "--train-limit", "4000", "--eval-limit", "500"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnist_ladder", *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = tmp_path / "runs" / "ladder.db"
    wait_for_epochs(db, 1, proc)
    return proc, db


def test_sigkill_mid_run_resumes_without_duplicated_epochs(tmp_path: Path, mnist) -> None:
    proc, db = start_run_past_its_first_epoch(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    listed = ladder("runs", cwd=tmp_path).stdout
    assert "interrupted" in listed
    run_id = listed.splitlines()[1].split()[0]  # under the header
    r = ladder("run", "--resume", run_id, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    con = sqlite3.connect(db)
    epochs = [e for (e,) in con.execute("SELECT epoch FROM epochs WHERE run_id=?", (run_id,))]
    assert sorted(epochs) == [1, 2, 3, 4]
    assert con.execute("SELECT status FROM runs").fetchone()[0] == "finished"
    again = ladder("run", "--resume", run_id, cwd=tmp_path)
    assert again.returncode == 2 and "already finished" in again.stderr


def test_sigterm_marks_the_run_interrupted_at_once(tmp_path: Path, mnist) -> None:
    proc, db = start_run_past_its_first_epoch(tmp_path)
    proc.terminate()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in stderr
    con = sqlite3.connect(db)
    # The stored status itself, not inferred later from a dead process id.
    assert con.execute("SELECT status FROM runs").fetchone()[0] == "interrupted"


def test_variant_design_run_never_sees_the_test_set(tmp_path: Path, mnist) -> None:
    r = ladder(
        "run",
        "step7.no-ema",
        "--val-only",
        "--epochs",
        "1",
        "--train-limit",
        "1000",
        "--eval-limit",
        "300",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "best val" in r.stdout and " test " not in r.stdout.split("epoch  1/1")[1]
    runs = ladder("runs", cwd=tmp_path)
    assert "step7.no-ema-s1" in runs.stdout and "val-only" in runs.stdout


def test_ladder_runs_steps_by_seeds_in_parallel_and_skips_finished(tmp_path: Path, mnist) -> None:
    args = [
        "ladder",
        "--steps",
        "step2,step6",
        "--seeds",
        "1,2",
        "--jobs",
        "2",
        "--epochs",
        "1",
        "--train-limit",
        "1000",
        "--eval-limit",
        "500",
    ]
    first = ladder(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(": finished") == 4
    report = tmp_path / "runs" / "REPORT.md"  # the user's report, beside the user's store
    assert report.is_file() and "trained on a data subset" in report.read_text()
    again = ladder(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped (already finished") == 4
    db = sqlite3.connect(tmp_path / "runs" / "ladder.db")
    assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 4
    assert {s for (s,) in db.execute("SELECT seed FROM runs")} == {1, 2}


def test_ladder_says_up_front_what_it_reruns_because_the_code_changed(
    tmp_path: Path, mnist, monkeypatch, capsys
) -> None:
    from mnist_ladder.engine import identity as engine_identity

    db = tmp_path / "ladder.db"
    args = [
        "ladder",
        "--steps",
        "step2",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--train-limit",
        "1000",
        "--eval-limit",
        "500",
        "--db",
        str(db),
        "--out",
        str(tmp_path / "runs"),
        "--no-report",
    ]
    assert cli.main(args) == 0
    assert "finished before with other code" not in capsys.readouterr().out
    monkeypatch.setattr(engine_identity, "_ENGINE_HASH", "another version")
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "1 of them finished before with other code" in out and "step2 seed 1 (step2-s1-" in out
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
    assert cli.main(args) == 0  # the re-run is now this code's: skipped, nothing said
    out = capsys.readouterr().out
    assert "skipped (already finished" in out and "other code" not in out


def test_killed_ladder_continues_where_it_stopped(tmp_path: Path, mnist) -> None:
    args = [
        "ladder",
        "--steps",
        "step6",
        "--seeds",
        "1",
        "--epochs",
        "4",
        "--train-limit",
        "4000",
        "--eval-limit",
        "500",
        "--no-report",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnist_ladder", *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = tmp_path / "runs" / "ladder.db"
    wait_for_epochs(db, 2, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    again = ladder(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resumed and finished" in again.stdout
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    assert [e for (e,) in con.execute("SELECT epoch FROM epochs ORDER BY epoch")] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "command",
    ["report", "compare step6 step13", "runs", "show x", "predict best a.png", "export best", "serve"],
)
@pytest.mark.parametrize("how", ["--db", "env"])
def test_a_named_store_that_does_not_exist_is_an_error(tmp_path: Path, command: str, how: str) -> None:
    """A typo in --db or $MNIST_LADDER_DB is not an empty store: one line, non-zero, and the
    old report stays as it was."""
    (tmp_path / "runs").mkdir()
    report = tmp_path / "runs" / "REPORT.md"
    report.write_text("the old report")
    typo = tmp_path / "runs" / "typo.db"
    args = command.split()
    env = {**os.environ}
    if how == "--db":
        args += ["--db", str(typo)]
    else:
        env["MNIST_LADDER_DB"] = str(typo)
    r = subprocess.run(
        [sys.executable, "-m", "mnist_ladder", *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode != 0, r.stdout
    assert f"no results store at {typo}" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert report.read_text() == "the old report" and not typo.exists()


def test_the_default_store_may_be_absent(tmp_path: Path) -> None:
    r = ladder("runs", cwd=tmp_path)
    assert r.returncode == 0 and "no runs" in r.stdout
    assert not (tmp_path / "runs").exists()


def test_store_schema_versions(tmp_path: Path) -> None:
    """A store of today's version and one from before versions were recorded (0) open and are
    brought to today's version when written; one from a newer version is one clear line."""
    from mnist_ladder.runs.store import BASE_VERSION, SCHEMA_VERSION, Store

    today = tmp_path / "today.db"
    with Store(today) as store:  # the robustness table, and version 3, come with its first write
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == BASE_VERSION
    with Store(today, create=False) as store:
        assert store.runs() == []
    old = tmp_path / "old.db"
    with Store(old) as store:  # a 0.1 store: version 0, without the later columns
        store.db.execute("PRAGMA user_version=0")
    with sqlite3.connect(old) as db:
        db.execute("ALTER TABLE runs DROP COLUMN training_id")
    with Store(old, create=False) as store:
        assert store.runs() == []
    with Store(old) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == BASE_VERSION
        assert "training_id" in {r[1] for r in store.db.execute("PRAGMA table_info(runs)")}
    newer = tmp_path / "newer.db"
    with Store(newer) as store:
        store.db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    r = ladder("runs", "--db", str(newer), cwd=tmp_path)
    assert r.returncode != 0 and "made by a newer mnist-ladder" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
