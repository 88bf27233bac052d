"""The results store: every run and every epoch in SQLite (write-ahead log, so a report can
read while runs write). An epoch is keyed by (run, epoch): a resumed run rewrites, never
duplicates, the epoch it was in."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .steps.base import Recipe

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    step TEXT NOT NULL,
    seed INTEGER NOT NULL,
    protocol TEXT NOT NULL,          -- 'test' (the seed's) or 'val' (50k train / 10k validation)
    recipe TEXT NOT NULL,            -- JSON of the full recipe, epochs and batch size included
    params INTEGER NOT NULL,
    code_hash TEXT NOT NULL,         -- sha256 of the package's sources: what ran
    git_commit TEXT,
    git_dirty INTEGER,
    torch_version TEXT NOT NULL,
    device TEXT NOT NULL,
    amp INTEGER NOT NULL,
    run_dir TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started TEXT NOT NULL,
    finished TEXT,
    status TEXT NOT NULL,            -- running | finished | interrupted | failed
    wall_seconds REAL,
    note TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    lr REAL, train_loss REAL, train_acc REAL, test_loss REAL, test_acc REAL,
    val_loss REAL, val_acc REAL, seconds REAL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS weights (  -- a finished run's final model.pt, so that figures and
    run_id TEXT PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,  -- predictions outlive
    data BLOB NOT NULL                                              -- its run folder
);
"""


class StoreError(RuntimeError):
    pass


# The project's reference results (committed with it) live in `results/` at the root of the
# checkout this package is installed from (an editable install); a user's own runs go to a
# git-ignored working store, `runs/ladder.db` in the current directory, unless told otherwise.
CHECKOUT_DIR = Path(__file__).resolve().parents[2]


def default_db_path() -> Path:
    """The user's working store: $MNIST_LADDER_DB, else runs/ladder.db here."""
    return Path(os.environ.get("MNIST_LADDER_DB", "runs/ladder.db"))


def reference_dir() -> Path:
    """Where the project's reference results live: $MNIST_LADDER_REFERENCE (a folder), else
    `results/` beside the checkout this package was installed from."""
    env = os.environ.get("MNIST_LADDER_REFERENCE")
    return Path(env) if env else CHECKOUT_DIR / "results"


def reference_db_path() -> Path:
    return reference_dir() / "ladder.db"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class RunRow:
    id: str
    step: str
    seed: int
    protocol: str
    recipe: dict
    params: int
    code_hash: str
    git_commit: str | None
    git_dirty: int | None
    torch_version: str
    device: str
    amp: int
    run_dir: str
    host: str
    pid: int
    started: str
    finished: str | None
    status: str
    wall_seconds: float | None
    note: str | None = None

    @property
    def effective_status(self) -> str:
        """A 'running' row whose process is gone (killed, machine slept) was interrupted."""
        if self.status == "running" and self.host == socket.gethostname() and not _alive(self.pid):
            return "interrupted"
        return self.status


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    def __init__(self, path: Path | str | None = None, *, create: bool = True) -> None:
        self.path = Path(path) if path else default_db_path()
        if not create and not self.path.exists():
            raise StoreError(f"no results store at {self.path}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
        except sqlite3.Error as e:
            raise StoreError(f"results store {self.path}: {e}") from e

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------- writing

    def add_run(self, row: RunRow) -> None:
        d = asdict(row)
        d["recipe"] = json.dumps(row.recipe, sort_keys=True)
        cols = ", ".join(d)
        with self.db:
            self.db.execute(f"INSERT INTO runs ({cols}) VALUES ({', '.join('?' * len(d))})",
                            tuple(d.values()))

    def add_epoch(self, run_id: str, epoch: dict) -> None:
        cols = ["run_id", *epoch]
        with self.db:
            self.db.execute(
                f"INSERT OR REPLACE INTO epochs ({', '.join(cols)}) "
                f"VALUES ({', '.join('?' * len(cols))})", (run_id, *epoch.values()))

    def put_weights(self, run_id: str, data: bytes) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO weights (run_id, data) VALUES (?, ?)",
                            (run_id, data))

    def set_status(self, run_id: str, status: str, wall_seconds: float | None = None,
                   note: str | None = None) -> None:
        finished = now() if status != "running" else None
        with self.db:
            self.db.execute(
                "UPDATE runs SET status=?, finished=?, wall_seconds=COALESCE(?, wall_seconds), "
                "note=COALESCE(?, note), pid=? WHERE id=?",
                (status, finished, wall_seconds, note, os.getpid(), run_id))

    # -------------------------------------------------------- reading

    def _row(self, r: sqlite3.Row) -> RunRow:
        d = dict(r)
        d["recipe"] = json.loads(d["recipe"])
        return RunRow(**d)

    def runs(self, step: str | None = None, status: str | None = None) -> list[RunRow]:
        q, args = "SELECT * FROM runs", []
        if step:
            q, args = q + " WHERE step = ?", [step]
        rows = [self._row(r) for r in self.db.execute(q + " ORDER BY started, id", args)]
        return [r for r in rows if status is None or r.effective_status == status]

    def run(self, run_id: str) -> RunRow:
        r = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if r is None:
            raise StoreError(f"no run {run_id!r} in {self.path}")
        return self._row(r)

    def epochs(self, run_id: str) -> list[dict]:
        cur = self.db.execute("SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,))
        return [dict(r) for r in cur]

    def weights(self, run_id: str) -> bytes | None:
        r = self.db.execute("SELECT data FROM weights WHERE run_id = ?", (run_id,)).fetchone()
        return None if r is None else bytes(r["data"])

    def ids_with_weights(self) -> set[str]:
        return {r["run_id"] for r in self.db.execute("SELECT run_id FROM weights")}

    def find_finished(self, step: str, seed: int, protocol: str, recipe: Recipe,
                      code_hash: str | None) -> RunRow | None:
        """A finished run of this configuration, made by this code (any code: None)."""
        for r in self.runs(step):
            if ((r.seed, r.protocol, r.status) == (seed, protocol, "finished")
                    and code_hash in (None, r.code_hash) and recipe.matches(r.recipe)):
                return r
        return None

    def find_resumable(self, step: str, seed: int, protocol: str, recipe: Recipe,
                       code_hash: str) -> RunRow | None:
        """The interrupted run of this configuration that got furthest (the latest if tied):
        two attempts can both have been cut, and the shorter one must not win."""
        found = [r for r in self.runs(step)
                 if (r.seed, r.protocol, r.code_hash) == (seed, protocol, code_hash)
                 and r.effective_status == "interrupted" and recipe.matches(r.recipe)]
        return max(found, key=lambda r: (len(self.epochs(r.id)), r.started), default=None)
