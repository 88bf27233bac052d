"""What a hostile or unlucky user hands the tool (issue #32): output paths that are not
regular files, stores edited to point elsewhere, a store another program made, step files
that exit or print, files over every size limit, damaged archives, and fuzzed arguments.
Each is one line on stderr and a non-zero exit, nothing touched that the command did not
make. Special files are made here, in the test's own folder, never the machine's /dev."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mnist_ladder import steps
from mnist_ladder.apps import cli, serve
from mnist_ladder.engine import data
from mnist_ladder.runs.store import Store


@pytest.fixture(autouse=True)
def _no_reference(tmp_path: Path, monkeypatch) -> None:
    """Each test reads its own stores only (and renders no reference report)."""
    monkeypatch.setenv("MNIST_LADDER_REFERENCE", str(tmp_path / "no-reference"))
    monkeypatch.delenv("MNIST_LADDER_DB", raising=False)
    monkeypatch.chdir(tmp_path)


def main(argv: list[str]) -> int:
    """cli.main, with argparse's own exit as its code."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def one_line(capsys, code: int, *wanted: str) -> str:
    out = capsys.readouterr()
    assert code != 0, out.out
    lines = [line for line in out.err.strip().splitlines() if line.startswith("ladder")]
    assert len(lines) == 1 and "Traceback" not in out.err, out.err
    assert all(w in lines[0] for w in wanted), lines[0]
    return lines[0]


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.save({"step": "step6", "state_dict": steps.get("step6").build().state_dict()}, path)
    return path


@pytest.fixture
def digit(mnist, tmp_path: Path) -> Path:
    path = tmp_path / "digit.png"
    Image.fromarray(mnist.test_images[0].numpy()).save(path)
    return path


# ---------------------------------------------------------------- 1. output paths


def special_targets(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "a-fifo"
    os.mkfifo(fifo)
    # a missing parent is made (`--report-path new/REPORT.md`); one that cannot be, is refused
    (tmp_path / "a-file").write_text("a file, not a folder")
    targets = {"fifo": fifo, "folder": tmp_path / "a-folder", "parent is a file": tmp_path / "a-file" / "x"}
    (tmp_path / "a-folder").mkdir()
    if os.geteuid() == 0:  # a character device like /dev/full, made here
        device = tmp_path / "a-device"
        os.mknod(device, stat.S_IFCHR | 0o600, os.makedev(1, 7))
        targets["device"] = device
    targets["proc"] = Path("/proc/self/no-such-file")
    return targets


def snapshot(path: Path) -> tuple:
    if not path.exists() and not path.is_fifo():
        return ("absent",)
    st_ = path.lstat()
    return (stat.S_IFMT(st_.st_mode), st_.st_rdev, st_.st_ino)


@pytest.mark.parametrize("command", ["export", "report", "compare-figure"])
def test_an_output_path_that_is_not_a_regular_file_is_never_replaced(
    command: str, tmp_path: Path, model_file: Path, capsys, trained_step6
) -> None:
    db, row = trained_step6
    for kind, target in special_targets(tmp_path).items():
        before = snapshot(target)
        argv = {
            "export": ["export", str(model_file), "--out", str(target)],
            "report": ["report", "--db", str(db), "--report-path", str(target)],
            "compare-figure": ["compare", row.id, row.id, "--db", str(db), "--figure", str(target)],
        }[command]
        code = cli.main(argv)
        one_line(capsys, code)
        assert snapshot(target) == before, kind


def test_show_keeps_two_inputs_of_the_same_name(
    model_file: Path, digit: Path, tmp_path: Path, capsys
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(digit, tmp_path / "a" / "7.png")
    shutil.copy(digit, tmp_path / "b" / "7.png")
    code = cli.main(["predict", str(model_file), "a/7.png", "b/7.png", "--show", "seen"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "seen").iterdir()) == ["7-seen-2.png", "7-seen.png"]


# ---------------------------------------------------------------- 3. a store never decides a path


def test_a_run_id_edited_to_climb_out_is_refused(trained_step6, tmp_path: Path, digit: Path, capsys) -> None:
    db, row = trained_step6
    edited = tmp_path / "edited.db"
    shutil.copy(db, edited)
    with sqlite3.connect(edited) as con:
        con.execute("PRAGMA foreign_keys=OFF")
        for table, column in (("runs", "id"), ("epochs", "run_id"), ("weights", "run_id")):
            con.execute(f"UPDATE {table} SET {column}='../../../escaped' WHERE {column}=?", (row.id,))
        con.execute("UPDATE runs SET run_dir='/nonexistent-run-folder'")
    code = cli.main(["predict", "../../../escaped", str(digit), "--db", str(edited)])
    one_line(capsys, code, "cannot name a file")
    assert not list(tmp_path.parent.parent.glob("escaped*"))


# ---------------------------------------------------------------- 4. nothing wrong as success


def test_a_model_giving_nan_is_no_prediction(model_file: Path, digit: Path, tmp_path: Path, capsys) -> None:
    state = torch.load(model_file)
    for tensor in state["state_dict"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    torch.save(state, model_file)
    code = cli.main(["predict", str(model_file), str(digit), "--json"])
    out = capsys.readouterr()
    assert code != 0
    answer = json.loads(out.out)  # strict JSON: a bare NaN would fail here
    assert answer["predictions"] == [] and "not finite" in answer["errors"][0]
    assert "NaN" not in out.out.replace("(NaN or infinity)", "")


def test_a_read_only_store_with_an_unfolded_log_is_not_read_stale(tmp_path: Path, capsys) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs to mount a small read-only filesystem (root)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mounting is not allowed here")
    try:
        db = mnt / "ladder.db"
        writer = Store(db)
        writer.db.execute("PRAGMA wal_autocheckpoint=0")
        with writer.db:
            writer.db.execute(
                "INSERT INTO runs (id, step, seed, protocol, recipe, params, code_hash, torch_version, "
                "device, amp, run_dir, host, pid, started, status) VALUES "
                "('r1', 'step6', 1, 'test', '{}', 1, 'x', 't', 'cpu', 0, '/x', 'h', 1, 'now', 'finished')"
            )
        assert (mnt / "ladder.db-wal").stat().st_size > 0
        copy = tmp_path / "copy"
        shutil.copytree(mnt, copy)  # the files as a crash left them, with the log unfolded
        writer.db.close()
        subprocess.run(["umount", str(mnt)], check=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
        for f in copy.iterdir():
            shutil.copy(f, mnt / f.name)
        (mnt / "ladder.db-shm").unlink(missing_ok=True)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        code = cli.main(["runs", "--db", str(db)])
        out = capsys.readouterr()
        if code == 0:  # read: then it must be the current data
            assert "r1" in out.out
        else:
            assert "write-ahead log" in out.err and len(out.err.strip().splitlines()) == 1
    finally:  # lazily, so that a file a bug left open never leaves the mount behind
        subprocess.run(["umount", "-l", str(mnt)])


def test_a_step_file_that_exits_or_prints_is_contained(tmp_path: Path, capsys, trained_step6) -> None:
    db, row = trained_step6
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "loud.py").write_text(
        "print('hello from a step file')\nfrom mnist_ladder.steps import get\nSTEP = None\n"
        "import dataclasses\nSTEP = dataclasses.replace(get('step6'), name='loud')\n"
    )
    code = cli.main(["compare", row.id, row.id, "--db", str(db), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    json.loads(out.out)  # stdout is the JSON alone
    assert "hello from a step file" in out.err
    (tmp_path / "steps" / "quits.py").write_text("import sys\nsys.exit(0)\n")
    code = cli.main(["list"])
    one_line(capsys, code, "quits.py", "sys.exit(0)")


def test_a_running_row_without_a_lease_blocks_nothing(tmp_path: Path) -> None:
    from mnist_ladder.runs.store import RunRow

    row = RunRow(
        "r1", "step6", 1, "test", {}, 1, "x", None, None, "t", "cpu", 0, "/x", "h", os.getppid(), "now",
        None, "running", None,
    )  # fmt: skip
    import socket

    row.host = socket.gethostname()  # a live pid of another process on this machine
    assert row.effective_status == "interrupted"


# ---------------------------------------------------------------- 5. size limits, every way in


def test_a_model_file_over_the_limits_is_refused_unread(tmp_path: Path, digit: Path, capsys) -> None:
    padded = tmp_path / "padded.pt"
    with open(padded, "wb") as f:  # sparse: a gigabyte that costs no disk
        f.truncate(2**30)
    for command in (["predict", str(padded), str(digit)], ["export", str(padded)]):
        one_line(capsys, cli.main(command), "refused unread")
    huge = tmp_path / "huge.pt"
    torch.save({"step": "step6", "state_dict": {"w": torch.empty(20_000_000, dtype=torch.uint8)}}, huge)
    # 20M parameters in a 20 MB file: counted before any network is built
    for command in (["predict", str(huge), str(digit)], ["export", str(huge)]):
        one_line(capsys, cli.main(command), "20,000,000 parameters")


def test_an_oversized_idx_file_in_the_cache_is_refused_unread(tmp_path: Path, mnist) -> None:
    cache = tmp_path / "cache"
    data.fetch(cache_dir=cache, use_network=True)  # a copy of the verified files
    with open(cache / "train-images-idx3-ubyte", "r+b") as f:
        f.truncate(4 * 2**30)  # 4 GB, sparse
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(data.DataError):
        data._read_cache(cache)
    assert tracemalloc.get_traced_memory()[1] < 200 * 2**20
    tracemalloc.stop()


def test_serve_bounds_pixels_and_requests_in_flight(trained_step6, monkeypatch) -> None:
    db, row = trained_step6
    app = serve.create_app([db])
    busy, peak = {"now": 0}, {"max": 0}
    real_answer = serve.answer

    def slow_answer(image, chosen):
        busy["now"] += 1
        peak["max"] = max(peak["max"], busy["now"])
        try:
            time.sleep(0.2)
            return real_answer(image, chosen)
        finally:
            busy["now"] -= 1

    monkeypatch.setattr(serve, "answer", slow_answer)
    small = io.BytesIO()
    Image.new("L", (280, 280), 255).save(small, format="PNG")
    big = io.BytesIO()
    Image.new("L", (2500, 2000), 255).save(big, format="PNG")  # 5 MP: legal for predict, not here

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            posts = [client.post(f"/api/predict?model={row.id}", content=small.getvalue()) for _ in range(12)]
            posts.append(client.post(f"/api/predict?model={row.id}", content=big.getvalue()))
            return await asyncio.gather(*posts)

    answers = asyncio.run(go())
    assert peak["max"] <= serve.MAX_IN_FLIGHT
    assert answers[-1].status_code == 400 and "pixel limit" in answers[-1].json()["error"]


# ---------------------------------------------------------------- 6. no traceback anywhere


def test_a_damaged_deflate_stream_in_an_idx_gz_is_one_line(tmp_path: Path, mnist) -> None:
    folder = tmp_path / "idx"
    folder.mkdir()
    cache = data.fetch()
    for name in data.FILES:
        blob = gzip.compress((cache / name).read_bytes(), compresslevel=1)
        if name == "t10k-labels-idx1-ubyte":
            blob = blob[:20] + bytes(b ^ 0x5A for b in blob[20:60]) + blob[60:]
        (folder / f"{name}.gz").write_bytes(blob)
    with pytest.raises(data.DataError, match="unreadable"):
        data.from_folder(folder)


def test_another_programs_store_is_one_line(tmp_path: Path, capsys) -> None:
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as con:
        con.execute("CREATE TABLE runs (x INTEGER, y TEXT)")
        con.execute("INSERT INTO runs VALUES (1, 'a')")
    for command in (["runs"], ["show", "x"], ["compare", "step6", "step13"], ["report"]):
        one_line(capsys, cli.main([*command, "--db", str(foreign)]), "not an mnist-ladder results store")


@pytest.mark.parametrize("seed", [str(2**70), "-1", "1e3"])
def test_a_seed_out_of_range_is_one_line_and_leaves_nothing(seed: str, tmp_path: Path, capsys) -> None:
    one_line(capsys, main(["run", "step1", "--seed", seed, "--db", "runs/ladder.db"]))
    assert not (tmp_path / "runs").exists()


def test_a_picture_over_the_pixel_limit_is_our_line_alone(model_file: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.new("L", (7000, 6000), 255).save(big)  # 42 MP: past our limit, under twice Pillow's
    r = subprocess.run(
        [sys.executable, "-W", "default", "-m", "mnist_ladder", "predict", str(model_file), str(big)],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "pixel limit" in r.stderr
    assert "DecompressionBombWarning" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    command=st.sampled_from(
        [
            ["runs", "--limit"],
            ["show"],
            ["compare", "step6"],
            ["summary"],
            ["run", "step1", "--epochs"],
            ["run", "step1", "--seed"],
            ["run", "step1", "--batch-size"],
            ["ladder", "--seeds"],
            ["new"],
            ["sweep", "report"],
        ]
    ),
    value=TEXT,
)
def test_fuzzed_arguments_never_give_a_traceback(command: list[str], value: str, tmp_path: Path) -> None:
    """A command's argument given any text: it runs or it says no in one line, never a
    traceback. Only arguments that cannot start a training run are fuzzed for `run`."""
    import contextlib

    argv = [*command, value]
    if command[0] in ("run", "ladder"):
        argv += ["--train-limit", "0"]  # refused by the parser: nothing trains
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse's own exit: one line by our parser
            code = e.code
    assert isinstance(code, int)
    assert "Traceback" not in err.getvalue()
    if code:
        assert len(err.getvalue().strip().split("\n")) <= 1, err.getvalue()  # a name may hold \r
