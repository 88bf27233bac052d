"""The results store: every run and every epoch in SQLite (write-ahead log, so a report can
read while runs write). An epoch is keyed by (run, epoch): a resumed run rewrites, never
duplicates, the epoch it was in.

Reading never writes: a store opened for reading is opened read-only (a committed reference
store stays byte-identical, and a read-only file can be read); columns added by later versions
are added only when a store is opened for writing. A run is claimed with a lease that its
process renews (a heartbeat), so two processes can never train one run, and a dead run is
known by its lapsed lease, not by whether some process holds its old pid.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from ..core.errors import LadderError

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
    status TEXT NOT NULL,            -- running | finished | interrupted | failed | diverged
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

# Columns added since the first version: (name, SQL type). An older store gets them when it is
# next opened for writing; until then readers see their defaults.
ADDED_COLUMNS = (
    ("source_hash", "TEXT"),  # a user step's source: part of the run's identity
    ("source_file", "TEXT"),
    ("source", "TEXT"),
    ("lease_owner", "TEXT"),  # who trains the run now, and until when (unix seconds)
    ("lease_until", "REAL"),
    ("layout", "TEXT"),  # the memory layout the run trained in
    ("training_id", "TEXT"),  # what determines its training (runs/identity.py); NULL before 0.2
    ("run_group", "TEXT"),  # the seeds trained together with it, packed (engine/pack.py); NULL alone
)
# SQLite's user_version: 0 for every store before versions were recorded (their tables are
# this version's less the columns above); bumped, with a migration, by each later change.
SCHEMA_VERSION = 3  # 2: run_group; 3: holds the robustness table (made when first written)
BASE_VERSION = 2  # a store of today's tables without the robustness table
ROBUSTNESS = """
CREATE TABLE IF NOT EXISTS robustness (  -- a finished run's accuracy on a corrupted set
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    suite TEXT NOT NULL,             -- 'corrupted' (runs/corrupted.py)
    split TEXT NOT NULL,             -- test | val: which images were corrupted
    corruption TEXT NOT NULL,
    accuracy REAL NOT NULL,
    images INTEGER NOT NULL,
    PRIMARY KEY (run_id, suite, corruption)
);
"""
LEASE_SECONDS = 60.0  # a run whose lease lapsed this long ago has no live process
HEARTBEAT_SECONDS = 15.0


class StoreError(LadderError, RuntimeError):
    pass


class RunClaimed(StoreError):
    """Another process holds this run's lease."""


# The project's reference results are committed with it in `results/` of the checkout; a
# checkout (an editable install) reads and writes them there. A built package carries a
# compact read-only copy as package data (`reference/ladder.db`, made by setup.py), which is
# read in place and never written. A user's own runs go to a git-ignored working store,
# `runs/ladder.db` in the current directory, unless told otherwise.
PACKAGE_DIR = Path(__file__).resolve().parents[1]
CHECKOUT_DIR = PACKAGE_DIR.parents[1]  # src/mnist_ladder -> the checkout, when it is one
SHIPPED_REFERENCE_DIR = PACKAGE_DIR / "reference"
DB_ENV = "MNIST_LADDER_DB"
REFERENCE_ENV = "MNIST_LADDER_REFERENCE"


def default_db_path() -> Path:
    """The user's working store: $MNIST_LADDER_DB, else runs/ladder.db here."""
    return Path(os.environ.get(DB_ENV, "runs/ladder.db"))


def chosen_db_path(given: str | Path | None) -> Path:
    """The user's store for a reading command. One named (on the command line or in
    $MNIST_LADDER_DB) must exist: a typo is a mistake, not an empty store. The default one
    may be absent (no runs of the user's yet)."""
    if given:
        path, source = Path(given), "given"
    elif os.environ.get(DB_ENV):
        path, source = Path(os.environ[DB_ENV]), f"${DB_ENV}"
    else:
        return default_db_path()
    if not path.is_file():
        raise StoreError(f"no results store at {path} ({source}); a store is created by training into it")
    return path


def in_checkout() -> bool:
    """Whether this package runs from a source checkout (src/ layout beside pyproject.toml)."""
    return PACKAGE_DIR.parent.name == "src" and (CHECKOUT_DIR / "pyproject.toml").is_file()


def reference_dir() -> Path:
    """Where the project's reference results are read: $MNIST_LADDER_REFERENCE (a folder),
    else `results/` of the checkout, else the copy shipped inside the installed package."""
    env = os.environ.get(REFERENCE_ENV)
    if env:
        return Path(env)
    return CHECKOUT_DIR / "results" if in_checkout() else SHIPPED_REFERENCE_DIR


def reference_db_path() -> Path:
    return reference_dir() / "ladder.db"


def reference_write_db_path() -> Path:
    """The reference store, for a command that writes it: refused for the shipped copy."""
    if reference_dir() == SHIPPED_REFERENCE_DIR:
        raise StoreError(
            "the reference results are written only from a checkout of mnist-ladder (this one "
            f"is installed, its reference copy is read-only); set ${REFERENCE_ENV} to a folder "
            "to keep reference runs of your own there"
        )
    return reference_db_path()


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
    source_hash: str | None = None
    source_file: str | None = None
    source: str | None = None
    lease_owner: str | None = None
    lease_until: float | None = None
    layout: str | None = None
    training_id: str | None = None
    run_group: str | None = None

    @property
    def effective_status(self) -> str:
        """A 'running' row whose lease lapsed (killed, machine slept) was interrupted; so is
        one whose process is gone from this machine, at once. A live pid proves nothing (it
        may be another process's now): then the lease decides."""
        if self.status != "running":
            return self.status
        if self.host == socket.gethostname() and not _alive(self.pid):
            return "interrupted"
        # Every live run holds a lease (claimed with its row): none, or a lapsed one, means
        # no process trains it, whatever process holds its old pid now.
        if self.lease_until is None or self.lease_until <= time.time():
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


def _store_errors(method):
    """SQLite's own errors (a full disk, a locked or damaged file) as one StoreError line."""

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as e:
            raise StoreError(f"results store {self.path}: {e}") from None

    return wrapped


# What a store must have to be one of ours (another program's database with a `runs` table
# is refused at open, not misread later): the first version's columns.
REQUIRED_COLUMNS = {
    "runs": {f.name for f in fields(RunRow)} - {name for name, _ in ADDED_COLUMNS},
    "epochs": {"run_id", "epoch", "test_acc", "val_acc"},
    "weights": {"run_id", "data"},
}


class Store:
    """One SQLite results store. `readonly` (the default for `create=False`) opens it without
    ever writing to it; otherwise it is created and migrated as needed."""

    def __init__(
        self, path: Path | str | None = None, *, create: bool = True, readonly: bool | None = None
    ) -> None:
        self.path = Path(path) if path else default_db_path()
        self.readonly = (not create) if readonly is None else readonly
        if not create and not self.path.is_file():
            raise StoreError(f"no results store at {self.path}")
        try:
            if self.readonly:
                self.db = _connect_readonly(self.path)
                self._check_version()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, timeout=30)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA foreign_keys=ON")
                self._check_version()
                self.db.executescript(SCHEMA)
                have = {r[1] for r in self.db.execute("PRAGMA table_info(runs)")}
                with self.db:
                    for name, kind in ADDED_COLUMNS:
                        if name not in have:
                            self.db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
                    # the version says which tables it has: 3 once the robustness table is in it
                    self.db.execute(
                        f"PRAGMA user_version={SCHEMA_VERSION if self._has('robustness') else BASE_VERSION}"
                    )
            self.db.row_factory = sqlite3.Row
            self._check_tables()
        except BaseException as e:  # refused: the connection closes with it (an open file
            if hasattr(self, "db"):  # keeps its filesystem busy)
                self.db.close()
            if isinstance(e, (sqlite3.Error, OSError)):
                raise StoreError(f"results store {self.path}: {e}") from None
            raise
        self._identity = _file_identity(self.path)

    def _check_version(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"results store {self.path} has schema version {version}, made by a "
                f"newer mnist-ladder (this one reads up to {SCHEMA_VERSION}): upgrade "
                "mnist-ladder to read it"
            )

    def _check_tables(self) -> None:
        for table, needed in REQUIRED_COLUMNS.items():
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if not have:
                raise StoreError(f"{self.path} is not an mnist-ladder results store (no {table} table)")
            if missing := needed - have:
                raise StoreError(
                    f"{self.path} is not an mnist-ladder results store (its {table} table has "
                    f"no {', '.join(sorted(missing))})"
                )

    def close(self) -> None:
        """A writer folds its write-ahead log into the database file as it closes, even while
        a reader is open (then SQLite's own close-time checkpoint is skipped): the file alone,
        as git commits it, holds every finished write."""
        if not self.readonly:
            with contextlib.suppress(sqlite3.Error):  # busy: the next writer's close folds it in
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_same_file(self) -> None:
        """SQLite keeps writing to a deleted file through its open handle: a store deleted or
        replaced under a live run would silently lose the run. Refuse instead."""
        if _file_identity(self.path) != self._identity:
            raise StoreError(
                f"the results store {self.path} was deleted or replaced while this process was writing to it"
            )

    # -------------------------------------------------------- writing

    @_store_errors
    def add_run(self, row: RunRow, owner: str | None = None) -> None:
        self.add_runs([row], owner)

    @_store_errors
    def add_runs(self, rows: list[RunRow], owner: str | None = None) -> None:
        """Insert runs (the seeds of one group), all or none. With `owner`, they are claimed
        in the same transaction, and refused while another process trains the same
        configuration of any of them (two `ladder ladder` at once)."""
        self._check_same_file()
        self.db.execute("BEGIN IMMEDIATE")  # the checks and the inserts as one atomic step
        try:
            for row in rows:
                d = asdict(row)
                d["recipe"] = json.dumps(row.recipe, sort_keys=True)
                if owner is not None:
                    d.update(lease_owner=owner, lease_until=time.time() + LEASE_SECONDS)
                    twins = self.db.execute(
                        "SELECT * FROM runs WHERE step=? AND seed=? AND training_id IS ? "
                        "AND status='running'",
                        (row.step, row.seed, row.training_id),
                    ).fetchall()
                    live = [t for t in map(self._row, twins) if t.effective_status == "running"]
                    if live:
                        raise RunClaimed(
                            f"{row.step} seed {row.seed} ({row.protocol}) is being "
                            f"trained by another process now (run {live[0].id})"
                        )
                self.db.execute(
                    f"INSERT INTO runs ({', '.join(d)}) VALUES ({', '.join('?' * len(d))})", tuple(d.values())
                )
        except BaseException:
            self.db.rollback()
            raise
        self.db.commit()

    @_store_errors
    def delete_run(self, run_id: str) -> None:
        self._check_same_file()
        with self.db:
            self.db.execute("DELETE FROM epochs WHERE run_id=?", (run_id,))
            self.db.execute("DELETE FROM weights WHERE run_id=?", (run_id,))
            self.db.execute("DELETE FROM runs WHERE id=?", (run_id,))

    def add_epoch(self, run_id: str, epoch: dict) -> None:
        self.add_epochs([(run_id, epoch)])

    @_store_errors
    def add_epochs(self, epochs: list[tuple[str, dict]]) -> None:
        """Epochs of several runs (one epoch of a group's seeds) in one transaction."""
        self._check_same_file()
        with self.db:
            for run_id, epoch in epochs:
                cols = ["run_id", *epoch]
                marks = ", ".join("?" * len(cols))
                self.db.execute(
                    f"INSERT OR REPLACE INTO epochs ({', '.join(cols)}) VALUES ({marks})",
                    (run_id, *epoch.values()),
                )

    @_store_errors
    def put_weights(self, run_id: str, data: bytes) -> None:
        self._check_same_file()
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO weights (run_id, data) VALUES (?, ?)", (run_id, data))

    @_store_errors
    def set_status(
        self, run_id: str, status: str, wall_seconds: float | None = None, note: str | None = None
    ) -> None:
        self._check_same_file()
        finished = now() if status != "running" else None
        with self.db:
            self.db.execute(
                "UPDATE runs SET status=?, finished=?, wall_seconds=COALESCE(?, wall_seconds), "
                "note=COALESCE(?, note), pid=? WHERE id=?",
                (status, finished, wall_seconds, note, os.getpid(), run_id),
            )

    # -------------------------------------------------------- reading

    # -------------------------------------------------------- claiming a run

    def claim(self, run_id: str, owner: str) -> None:
        self.claim_all([run_id], owner)

    @_store_errors
    def claim_all(self, run_ids: list[str], owner: str) -> None:
        """Take the runs' leases (a group's seeds together), atomically, all or none: refused
        while another owner's lease on any of them is live and its process not known dead."""
        self._check_same_file()
        self.db.execute("BEGIN IMMEDIATE")  # the checks and the updates as one atomic step
        try:
            for run_id in run_ids:
                row = self.run(run_id)
                if row.lease_owner not in (None, owner) and row.effective_status == "running":
                    until = datetime.fromtimestamp(row.lease_until or 0, UTC)
                    raise RunClaimed(
                        f"run {run_id} is being trained by another process "
                        f"({row.host}, pid {row.pid}); its lease runs until "
                        f"{until:%H:%M:%S} UTC"
                    )
                self.db.execute(
                    "UPDATE runs SET lease_owner=?, lease_until=?, status='running', pid=?, host=? "
                    "WHERE id=?",
                    (owner, time.time() + LEASE_SECONDS, os.getpid(), socket.gethostname(), run_id),
                )
        except BaseException:
            self.db.rollback()
            raise
        self.db.commit()

    @_store_errors
    def release(self, run_id: str, owner: str) -> None:
        with self.db:
            self.db.execute(
                "UPDATE runs SET lease_until=NULL, lease_owner=NULL WHERE id=? AND lease_owner=?",
                (run_id, owner),
            )

    @_store_errors
    def group(self, run_group: str) -> list[RunRow]:
        """The runs trained together in `run_group`, in the order of their seeds' packing."""
        if "run_group" not in {r[1] for r in self.db.execute("PRAGMA table_info(runs)")}:
            return []  # a store from before groups, not yet migrated: none in it
        rows = self.db.execute("SELECT * FROM runs WHERE run_group=? ORDER BY rowid", (run_group,))
        return [self._row(r) for r in rows]

    # -------------------------------------------------------- reading

    def _row(self, r: sqlite3.Row) -> RunRow:
        d = dict(r)
        d["recipe"] = json.loads(d["recipe"])
        known = {f.name for f in fields(RunRow)}
        return RunRow(**{k: v for k, v in d.items() if k in known})

    @_store_errors
    def runs(self, step: str | None = None, status: str | None = None) -> list[RunRow]:
        q, args = "SELECT * FROM runs", []
        if step:
            q, args = q + " WHERE step = ?", [step]
        rows = [self._row(r) for r in self.db.execute(q + " ORDER BY started, id", args)]
        return [r for r in rows if status is None or r.effective_status == status]

    @_store_errors
    def run(self, run_id: str) -> RunRow:
        r = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if r is None:
            raise StoreError(f"no run {run_id!r} in {self.path}")
        return self._row(r)

    @_store_errors
    def epochs(self, run_id: str) -> list[dict]:
        cur = self.db.execute("SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,))
        return [dict(r) for r in cur]

    def _has(self, table: str) -> bool:
        return (
            self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone()
            is not None
        )

    @_store_errors
    def put_robustness(
        self, run_id: str, suite: str, split: str, scores: dict[str, float], images: int
    ) -> None:
        """A run's accuracy under each corruption of `suite`; the table is made on first write."""
        self._check_same_file()
        if not self._has("robustness"):
            self.db.executescript(ROBUSTNESS)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO robustness VALUES (?, ?, ?, ?, ?, ?)",
                [(run_id, suite, split, name, acc, images) for name, acc in scores.items()],
            )

    @_store_errors
    def robustness(self, run_id: str, suite: str = "corrupted") -> dict[str, float] | None:
        """corruption -> accuracy %, or None: not measured (a store without the table too)."""
        if not self._has("robustness"):
            return None
        rows = self.db.execute(
            "SELECT corruption, accuracy FROM robustness WHERE run_id=? AND suite=?", (run_id, suite)
        ).fetchall()
        return {r[0]: r[1] for r in rows} or None

    @_store_errors
    def weights(self, run_id: str) -> bytes | None:
        r = self.db.execute("SELECT data FROM weights WHERE run_id = ?", (run_id,)).fetchone()
        return None if r is None else bytes(r["data"])

    @_store_errors
    def ids_with_weights(self) -> set[str]:
        return {r["run_id"] for r in self.db.execute("SELECT run_id FROM weights")}

    def find_finished(self, step: str, seed: int, training_id: str | None) -> RunRow | None:
        """A finished run of this step and seed with this training identity (any: None)."""
        for r in self.runs(step):
            if (r.seed, r.status) == (seed, "finished") and training_id in (None, r.training_id):
                return r
        return None

    def find_resumable(self, step: str, seed: int, training_id: str) -> RunRow | None:
        """The interrupted run of this step, seed and training identity that got furthest
        (the latest if tied): two attempts can both have been cut, and the shorter one must
        not win."""
        found = [
            r
            for r in self.runs(step)
            if (r.seed, r.training_id) == (seed, training_id) and r.effective_status == "interrupted"
        ]
        return max(found, key=lambda r: (len(self.epochs(r.id)), r.started), default=None)


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """Open without writing anything: mode=ro. A store in WAL mode whose folder cannot take
    the -shm file (a read-only checkout) is opened as immutable instead."""
    uri = path.resolve().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30)
    try:
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1")
        return db
    except sqlite3.OperationalError:
        db.close()
        wal = path.with_name(path.name + "-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            # Opened immutable, SQLite would ignore the log and read stale data: refuse.
            raise StoreError(
                f"results store {path}: its write-ahead log ({wal.name}) holds writes not yet "
                "folded into it, and its folder cannot be written to read them; open it once "
                "where it can be written (any `ladder run` into it), or copy the folder"
            ) from None
        return sqlite3.connect(f"{uri}?immutable=1", uri=True)


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Heartbeat:
    """Renews a run's lease every few seconds from a thread with its own connection, until
    stopped: the lease lapses within a minute of the process dying, however it died."""

    def __init__(
        self, path: Path, run_ids: str | list[str], owner: str, every: float = HEARTBEAT_SECONDS
    ) -> None:
        self.run_ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
        self.path, self.owner, self.every = path, owner, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"lease-{self.run_ids[0]}")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            try:
                db = sqlite3.connect(self.path, timeout=30)
                with db:
                    db.executemany(
                        "UPDATE runs SET lease_until=? WHERE id=? AND lease_owner=?",
                        [(time.time() + LEASE_SECONDS, run_id, self.owner) for run_id in self.run_ids],
                    )
                db.close()
            except sqlite3.Error:
                pass  # a missed beat; the epoch writes in the main thread report a lost store


class Stores:
    """Several stores read as one (the user's working store, then the reference results): the
    reading half of `Store`'s interface. A run id names one run in all of them."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.stores: list[Store] = []
        seen: set[Path] = set()
        for p in paths:
            if p.resolve() in seen or not p.is_file():
                continue
            seen.add(p.resolve())
            self.stores.append(Store(p, create=False))
        self.path = self.stores[0].path if self.stores else None

    def close(self) -> None:
        for s in self.stores:
            s.close()

    def __enter__(self) -> Stores:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def runs(self, step: str | None = None, status: str | None = None) -> list[RunRow]:
        rows: dict[str, RunRow] = {}
        for s in self.stores:
            for r in s.runs(step, status):
                rows.setdefault(r.id, r)
        return sorted(rows.values(), key=lambda r: (r.started, r.id))

    def _owner(self, run_id: str) -> Store:
        for s in self.stores:
            if s.db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                return s
        where = ", ".join(str(s.path) for s in self.stores) or "no store"
        raise StoreError(f"no run {run_id!r} in {where}")

    def run(self, run_id: str) -> RunRow:
        return self._owner(run_id).run(run_id)

    def epochs(self, run_id: str) -> list[dict]:
        return self._owner(run_id).epochs(run_id)

    def weights(self, run_id: str) -> bytes | None:
        return self._owner(run_id).weights(run_id)

    def robustness(self, run_id: str, suite: str = "corrupted") -> dict[str, float] | None:
        return self._owner(run_id).robustness(run_id, suite)

    def origin(self, run_id: str) -> Path:
        return self._owner(run_id).path

    def group(self, run_group: str) -> list[RunRow]:
        for s in self.stores:
            if rows := s.group(run_group):
                return rows
        return []
