"""A run's training identity changes only when its training does (issue #27): `ladder ladder`
reuses a finished run after an edit of a view or of a step's prose, and trains it again after
an edit of the training loop or of the C kernels. Each edit is made to a copy of the package,
run in a process of its own, as a user's checkout would be after the edit."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import mnist_ladder

PACKAGE = Path(mnist_ladder.__file__).resolve().parent


def test_ladder_reuses_runs_across_view_and_prose_edits_and_retrains_after_engine_edits(
    tmp_path: Path, mnist
) -> None:
    copy = tmp_path / "src" / "mnist_ladder"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    db = tmp_path / "ladder.db"
    env = {**os.environ, "PYTHONPATH": str(copy.parent), "MNIST_LADDER_REFERENCE": str(tmp_path / "none")}

    def ladder() -> str:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "mnist_ladder",
                "ladder",
                "--steps",
                "step6",
                "--seeds",
                "1",
                "--epochs",
                "1",
                "--train-limit",
                "256",
                "--eval-limit",
                "128",
                "--precision",
                "off",
                "--layout",
                "cl",
                "--db",
                str(db),
                "--out",
                str(tmp_path / "runs"),
                "--no-report",
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        assert (
            str(copy)
            in subprocess.run(  # the copy runs, not the checkout
                [sys.executable, "-c", "import mnist_ladder; print(mnist_ladder.__file__)"],
                env=env,
                capture_output=True,
                text=True,
            ).stdout
        )
        return done.stdout

    def runs() -> int:
        con = sqlite3.connect(db)
        try:
            return con.execute("SELECT COUNT(*) FROM runs WHERE status='finished'").fetchone()[0]
        finally:
            con.close()

    def append(relative: str, text: str) -> None:
        path = copy / relative
        path.write_text(path.read_text() + text)

    assert "finished" in ladder() and runs() == 1

    append("views/report.py", "\n# a comment in a view\n")
    assert "skipped (already finished" in ladder() and runs() == 1

    step6 = copy / "steps" / "step6_lr_scheduler.py"
    source = step6.read_text()
    assert "The model still under-fits" in source
    step6.write_text(source.replace("The model still under-fits", "Edited: the model under-fits"))
    assert "skipped (already finished" in ladder() and runs() == 1

    append("engine/train.py", "\n# a comment in the training loop\n")
    out = ladder()
    assert "1 of them finished before with other code" in out and runs() == 2

    append("engine/kernels.c", "\n/* a comment in the C kernels */\n")
    out = ladder()
    assert "1 of them finished before with other code" in out and runs() == 3
