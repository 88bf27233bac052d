"""Only what pyproject.toml cannot say: the reference results go into the built package.

The reference store is written in one place, `results/ladder.db` of the checkout. A wheel
carries a compact, read-only copy of it as package data (`mnist_ladder/reference/ladder.db`),
so that an installed package compares with, predicts from and serves the reference runs with
no checkout. The copy is made here, at build time, rather than committed twice: a rollback
journal instead of a write-ahead log (reading it never creates `-wal`/`-shm` files beside it,
and site-packages may be read-only), and vacuumed. An editable install reads `results/`
itself, so nothing is copied for it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

REFERENCE = Path(__file__).resolve().parent / "results" / "ladder.db"


def compact_copy(source: Path, target: Path) -> None:
    """A self-contained copy of a SQLite store: every committed write, no log files."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    reading = sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True)
    writing = sqlite3.connect(target)
    try:
        reading.backup(writing)
        writing.execute("PRAGMA journal_mode=DELETE")
        writing.execute("VACUUM")
    finally:
        reading.close()
        writing.close()


class BuildWithReference(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        if not REFERENCE.is_file():
            raise SystemExit(f"the reference results {REFERENCE} are missing: build from a full checkout")
        compact_copy(REFERENCE, Path(self.build_lib) / "mnist_ladder" / "reference" / "ladder.db")


setup(cmdclass={"build_py": BuildWithReference})
