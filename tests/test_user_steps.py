"""Your own ladder: step files outside the package, a store of your own, `ladder compare`, and
the Python API, used the way a new user would (real processes, real MNIST subsets)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mnist_ladder import steps
from mnist_ladder.runs import catalog
from mnist_ladder.runs.store import SCHEMA, Store, reference_db_path

REPO = Path(__file__).resolve().parents[1]
SUBSET = ["--train-limit", "3000", "--eval-limit", "1000"]


def ladder(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mnist_ladder", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
    )


def tracked_state() -> tuple[str, str]:
    """The repository's tracked files as git sees them, and the reference store's bytes."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
    ).stdout
    return status, hashlib.sha256(reference_db_path().read_bytes()).hexdigest()


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode != 0, r.stdout
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def test_new_run_compare_report_from_a_fresh_folder(tmp_path: Path) -> None:
    before = tracked_state()
    r = ladder("new", "mystep", "--from", "step6", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    step_file = tmp_path / "steps" / "mystep.py"
    text = step_file.read_text()
    assert "def build()" in text and "momentum=0.7," in text and "# SGD momentum" in text
    step_file.write_text(text.replace("momentum=0.7,", "momentum=0.8,"))  # the user's change
    listed = ladder("list", cwd=tmp_path).stdout
    assert "mystep" in listed and "[mystep.py]" in listed
    for seed in ("1", "2"):
        r = ladder("run", "steps/mystep.py", "--epochs", "2", "--seed", seed, *SUBSET, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "verdict: 6,720 parameters (under the 8,000 budget)" in r.stdout
        assert "step6's reference at epoch 2 of their 15" in r.stdout  # its base's runs
    assert (tmp_path / "runs" / "ladder.db").is_file()
    r = ladder("compare", "step6", "mystep", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    c = json.loads(r.stdout)
    assert c["epoch"] == 2 and len(c["b"]["seeds"]) == 2 and len(c["a"]["seeds"]) >= 3
    assert any("epoch" in n for n in c["notes"]) and any("protocol" in n for n in c["notes"])
    assert [d["field"] for d in c["recipe_diff"]] == ["epochs", "momentum"]
    assert "cannot be judged yet" in c["verdict"]  # two seeds of mystep
    text = ladder("compare", "step6", "mystep", cwd=tmp_path).stdout
    assert "mystep" in text and "95%" in text
    r = ladder("report", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = (tmp_path / "runs" / "REPORT.md").read_text()
    assert "## step6" in report  # the reference results, read beside the user's
    assert "trained on a data subset" in report  # mystep's quick runs are checks, said so
    assert tracked_state() == before


def test_an_edited_step_file_is_another_experiment(tmp_path: Path) -> None:
    r = ladder("new", "mine", "--from", "step1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    args = ["ladder", "--steps", "steps/mine.py", "--seeds", "1", "--epochs", "1", *SUBSET, "--no-report"]
    first = ladder(*args, cwd=tmp_path)
    assert first.returncode == 0 and ": finished" in first.stdout, first.stderr
    again = ladder(*args, cwd=tmp_path)
    assert "skipped (already finished" in again.stdout
    path = tmp_path / "steps" / "mine.py"
    path.write_text(path.read_text().replace("lr=0.01,", "lr=0.02,"))
    edited = ladder(*args, cwd=tmp_path)
    assert ": finished" in edited.stdout and "skipped" not in edited.stdout
    with Store(tmp_path / "runs" / "ladder.db", create=False) as store:
        rows = store.runs("mine")
    assert len(rows) == 2 and rows[0].source_hash != rows[1].source_hash
    assert rows[1].source == path.read_text()  # the source is stored with the run


BROKEN = {
    "syntax": ("STEP = (\n", "line 1: syntax error"),
    "no_step": ("x = 1\n", "defines no STEP"),
    "clash": (
        "import dataclasses\nfrom mnist_ladder import step\n"
        "STEP = dataclasses.replace(step('step6'), name='step6')\n",
        "is a built-in step",
    ),
    "forward": (
        "from torch import nn\nfrom mnist_ladder import Recipe, Step\n"
        "STEP = Step('bad', 't', build=lambda: nn.Linear(3, 10), recipe=Recipe())\n",
        "forward pass fails on a [2, 1, 28, 28] batch",
    ),
    "shape": (
        "from torch import nn\nfrom mnist_ladder import Recipe, Step\n"
        "STEP = Step('bad', 't', build=lambda: nn.Sequential(nn.Flatten(), "
        "nn.Linear(784, 12)), recipe=Recipe())\n",
        "returns [2, 12]",
    ),
    "params": (
        "import dataclasses\nfrom mnist_ladder import step\n"
        "STEP = dataclasses.replace(step('step6'), name='mine', params=5000)\n",
        "pins params=5,000 but its model has 6,720",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_step_file_is_one_line_naming_it(tmp_path: Path, case: str) -> None:
    source, message = BROKEN[case]
    (tmp_path / f"{case}.py").write_text(source)
    r = ladder("summary", f"{case}.py", cwd=tmp_path)
    one_line_error(r, f"{case}.py", message)


def test_bad_names_files_and_clashes(tmp_path: Path) -> None:
    one_line_error(ladder("run", "step99", cwd=tmp_path), "unknown step 'step99'")
    one_line_error(ladder("run", "nope/missing.py", cwd=tmp_path), "no such step file")
    (tmp_path / "digits.png").write_bytes(b"\x89PNG")
    one_line_error(ladder("summary", "./digits.png", cwd=tmp_path), "not a Python file")
    assert ladder("new", "twin", "--from", "step2", cwd=tmp_path).returncode == 0
    (tmp_path / "steps" / "copy.py").write_text((tmp_path / "steps" / "twin.py").read_text())
    one_line_error(ladder("list", cwd=tmp_path), "both define step 'twin'")
    assert not (tmp_path / "runs").exists()  # nothing was trained or stored


def test_comparing_a_step_with_no_runs_says_which_runs_to_start(tmp_path: Path) -> None:
    assert ladder("new", "fresh", "--from", "step6", cwd=tmp_path).returncode == 0
    r = ladder("compare", "step6", "fresh", cwd=tmp_path)
    one_line_error(r, "fresh has no finished runs", "ladder ladder --steps fresh --seeds 3")


def test_a_store_from_an_older_version_is_read_without_being_changed(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)  # the first version's schema: none of the columns added since
    con.executescript(SCHEMA)
    con.execute(
        "INSERT INTO runs VALUES ('step6-old', 'step6', 1, 'test', ?, 6720, 'c0de', NULL,"
        " NULL, '2.4', 'cpu', 0, '/nowhere', 'host', 1, '2025-01-01', '2025-01-01',"
        " 'finished', 10.0, NULL)",
        (json.dumps(steps.get("step6").recipe.to_dict()),),
    )
    con.execute("INSERT INTO epochs (run_id, epoch, test_acc) VALUES ('step6-old', 1, 98.5)")
    con.commit()
    con.close()
    before = db.read_bytes()
    r = ladder("runs", "--db", str(db), cwd=tmp_path)
    assert r.returncode == 0 and "step6-old" in r.stdout, r.stderr
    r = ladder("show", "step6-old", "--db", str(db), cwd=tmp_path)
    assert r.returncode == 0 and "momentum" in r.stdout, r.stderr
    assert db.read_bytes() == before  # reading migrated nothing
    with Store(db) as store:  # writing does
        assert store.run("step6-old").source_hash is None
    assert "source_hash" in {c[1] for c in sqlite3.connect(db).execute("PRAGMA table_info(runs)")}


def test_runs_lists_newest_first_with_a_header_and_filters(tmp_path: Path) -> None:
    r = ladder("runs", "--reference", "--step", "step6", "--limit", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["run", "started", "(UTC)"]
    rows = [ln for ln in lines[1:] if ln.startswith("step6-")]
    assert len(rows) == 2 and "older run(s) not shown" in lines[-1]
    started = [" ".join(ln.split()[1:3]) for ln in rows]
    assert started == sorted(started, reverse=True)


def test_best_names_the_run_it_chose(tmp_path: Path) -> None:
    r = ladder("export", "best", "--out", str(tmp_path / "best.onnx"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "best: " in r.stderr and "has the highest mean final test accuracy under 8,000" in r.stderr


NOTEBOOK = """
import mnist_ladder as ml
from mnist_ladder.models import Conv, Net
from torch import nn


def build():
    return Net(Conv(1, 8, order="cbr"), nn.MaxPool2d(2), Conv(8, 16, order="cbr"),
               nn.AdaptiveAvgPool2d(1), Conv(16, 10, 1))


mine = ml.Step("tiny-inline", "two convolutions and GAP", build=build,
               recipe=ml.step("step2").recipe)
assert "step6" in ml.steps() and mine.params == ml.count_parameters(build())
result = ml.fit(mine, seed=1, epochs=2, train_limit=5000, eval_limit=1000, verbose=False)
assert len(result.history) == 2 and result.history[-1]["test_acc"] > 20  # chance is 10
result.plot().savefig("curves.png")
comparison = ml.compare("step2", mine)
print(comparison.epoch, len(comparison.b_values), comparison.verdict)
print(result.run_id)
"""


def test_a_notebook_style_script_using_only_the_documented_api(tmp_path: Path) -> None:
    script = tmp_path / "notebook.py"
    script.write_text(textwrap.dedent(NOTEBOOK))
    r = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stderr
    epoch, seeds, *verdict = r.stdout.splitlines()[-2].split()
    assert (epoch, seeds) == ("2", "1") and "cannot be judged yet" in " ".join(verdict)
    assert (tmp_path / "curves.png").stat().st_size > 5000
    run_id = r.stdout.splitlines()[-1]
    with Store(tmp_path / "runs" / "ladder.db", create=False) as store:
        row = store.run(run_id)
    assert "def build():" in row.source and row.source_hash  # inspect recovered the cell


def test_the_builtin_registry_never_sees_user_files(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "x.py").write_text(
        "import dataclasses\nfrom mnist_ladder import step\n"
        "STEP = dataclasses.replace(step('step1'), name='x1')\n"
    )
    monkeypatch.chdir(tmp_path)
    merged = catalog.catalog()
    assert "x1" in merged.steps and "x1" not in steps.STEPS
    assert merged.get("x1").source_file == str((tmp_path / "steps" / "x.py").resolve())
