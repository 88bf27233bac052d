"""The summary of a GPU check (benchmarks/gpu_check.sh): what ran, how long, which accuracy.

Reads the GPU store (runs and epochs), the phase log and the machine facts the shell script
wrote, and the reference store for the CPU figure beside it; writes Markdown and a one-file
copy of the store (no -wal beside it). Standard library only: it must work even where the
package's own dependencies failed to install.

    python benchmarks/gpu_summary.py --store S --phases P --info I --out MD [--copy-to DB]
        [--reference results/ladder.db]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
from pathlib import Path


def connect_readonly(path: Path) -> sqlite3.Connection:
    """Reads without writing: mode=ro, or immutable where the -shm file cannot be made."""
    uri = path.resolve().as_uri()
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30)
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1")
        return db
    except sqlite3.OperationalError:
        return sqlite3.connect(f"{uri}?immutable=1", uri=True)


def rows(db: sqlite3.Connection, sql: str, *args: object) -> list[dict]:
    cur = db.execute(sql, args)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def read_tsv(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    return [line.split("\t") for line in path.read_text().splitlines() if line.strip()]


def run_tables(db: sqlite3.Connection) -> list[str]:
    out = [
        "## Runs (this GPU store)",
        "",
        "| run | step | seed | status | device | precision | epochs | wall s | median s/epoch "
        "| final test % | last 3 epochs | best |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs = rows(db, "SELECT * FROM runs ORDER BY started")
    per_epoch: list[str] = []
    for r in runs:
        eps = rows(db, "SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", r["id"])
        planned = json.loads(r["recipe"]).get("epochs")
        accs = [e["test_acc"] for e in eps if e["test_acc"] is not None]
        secs = [e["seconds"] for e in eps if e["seconds"] is not None]
        out.append(
            f"| {r['id']} | {r['step']} | {r['seed']} | {r['status']} | {r['device']} "
            f"| {'bf16 autocast' if r['amp'] else 'fp32'} | {len(eps)}/{planned} "
            f"| {fmt(r['wall_seconds'], '.1f')} | {fmt(statistics.median(secs) if secs else None)} "
            f"| {fmt(accs[-1] if accs else None)} | {' / '.join(f'{a:.2f}' for a in accs[-3:]) or '-'} "
            f"| {fmt(max(accs) if accs else None)} |"
        )
        per_epoch += ["", f"### {r['id']} ({r['step']}, seed {r['seed']}, {r['status']})", ""]
        if not eps:
            per_epoch.append("No epoch finished.")
            continue
        per_epoch += [
            "| epoch | lr | train loss | train % | test loss | test % | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        per_epoch += [
            f"| {e['epoch']} | {fmt(e['lr'], '.5f')} | {fmt(e['train_loss'], '.4f')} "
            f"| {fmt(e['train_acc'])} | {fmt(e['test_loss'], '.4f')} | {fmt(e['test_acc'])} "
            f"| {fmt(e['seconds'])} |"
            for e in eps
        ]
    if not runs:
        out.append("| (no run recorded) |||||||||||| ")
    return [*out, "", "## Per epoch", *per_epoch]


def reference_lines(reference: Path, steps: list[str]) -> list[str]:
    """The CPU figure for the same steps: finished 15-epoch test-protocol runs, full data."""
    out = ["## For comparison: the reference store (CPU)", ""]
    try:
        db = connect_readonly(reference)
        for step in steps:
            got = [
                r
                for r in rows(
                    db,
                    "SELECT id, recipe, wall_seconds, device, amp FROM runs "
                    "WHERE step = ? AND status = 'finished' AND protocol = 'test'",
                    step,
                )
                if json.loads(r["recipe"]).get("epochs") == 15 and r["wall_seconds"]
            ]
            finals = []
            for r in got:
                last = db.execute(
                    "SELECT test_acc FROM epochs WHERE run_id = ? ORDER BY epoch DESC LIMIT 1", (r["id"],)
                ).fetchone()
                if last and last[0] is not None:
                    finals.append(last[0])
            if not got:
                out.append(f"- {step}: no finished 15-epoch run there")
                continue
            devices = ", ".join(sorted({r["device"] for r in got}))
            mean = f", mean final test {statistics.mean(finals):.2f}%" if finals else ""
            out.append(
                f"- {step}: {len(got)} runs on {devices}, median wall "
                f"{statistics.median(r['wall_seconds'] for r in got):.0f} s{mean}"
            )
    except (sqlite3.Error, OSError, ValueError) as e:
        out.append(f"- unreadable: {e}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--phases", type=Path, required=True)
    p.add_argument("--info", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--copy-to", type=Path)
    p.add_argument("--reference", type=Path, default=Path("results/ladder.db"))
    a = p.parse_args()

    info = {r[0]: r[1] if len(r) > 1 else "" for r in read_tsv(a.info)}
    lines = [f"# GPU check on {info.get('gpu', 'an unknown device')}", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "## Phases", "", "| phase | exit | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {' | '.join([*r, '', '', ''][:4])} |" for r in read_tsv(a.phases)]
    lines.append("")
    steps: list[str] = []
    if a.store.is_file():
        try:
            db = connect_readonly(a.store)
            lines += run_tables(db)
            steps = [r[0] for r in db.execute("SELECT DISTINCT step FROM runs ORDER BY step")]
            db.close()
            if a.copy_to:  # one file, the WAL folded in: what comes back is complete
                a.copy_to.unlink(missing_ok=True)
                with sqlite3.connect(a.store) as src:
                    src.execute("VACUUM INTO ?", (str(a.copy_to),))
        except sqlite3.Error as e:
            lines.append(f"The GPU store {a.store} could not be read: {e}")
    else:
        lines.append(f"No GPU store at {a.store}: no run started.")
    if steps and a.reference.is_file():
        lines += ["", *reference_lines(a.reference, steps)]
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:40]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
