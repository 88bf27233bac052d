"""Shared fixtures: the real MNIST, loaded once (fetched and verified on first use); a
throw-away PostgreSQL server and sweep workers for the multi-worker sweep tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from mnist_ladder.engine import data


@pytest.fixture(scope="session")
def mnist() -> data.MNIST:
    return data.load()


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def trained_step6(mnist, tmp_path_factory):
    """A Step 6 model trained briefly on real MNIST, recorded in a store like any run:
    (store path, run row). About 99% test accuracy: enough to test its use."""
    from mnist_ladder import steps
    from mnist_ladder.runs import experiment
    from mnist_ladder.runs.store import Store

    root = tmp_path_factory.mktemp("trained")
    spec = experiment.make_spec(steps.get("step6"), seed=1, epochs=4, train_limit=30_000)
    with Store(root / "ladder.db") as store:
        row = experiment.execute(
            spec, mnist, store, root / "runs", device=torch.device("cpu"), amp=True, log=lambda s: None
        )
    return root / "ladder.db", row


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))  # Debian's layout
    return str(candidates[-1]) if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL cluster on a loopback port, addressed as the README writes it
    (`postgresql://USER@HOST:PORT/sweeps`, no driver named). Missing server binaries skip the
    tests on a developer's machine but fail them in CI (CI=true), which installs PostgreSQL."""
    if not pg_bin("initdb"):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs it")
        pytest.skip("PostgreSQL server binaries not installed")
    root = Path(tempfile.mkdtemp(prefix="ladder-pg-"))
    root.chmod(0o755)
    data, sock = root / "data", root / "sock"
    data.mkdir()
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(data, "postgres")
        shutil.chown(sock, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    run(pg_bin("initdb"), "-D", str(data), "-U", "ladder", "--auth=trust")
    run(
        pg_bin("pg_ctl"),
        "-D",
        str(data),
        "-w",
        "-l",
        str(root / "sock" / "log"),
        "-o",
        f"-p {port} -k {sock} -c listen_addresses=127.0.0.1",
        "start",
    )
    try:
        run(pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "ladder", "sweeps")
        yield f"postgresql://ladder@127.0.0.1:{port}/sweeps"
    finally:
        run(pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


TINY_SWEEP = ["--epochs", "2", "--train-limit", "1000", "--eval-limit", "500"]


@pytest.fixture
def sweep_worker():
    """Starts `ladder sweep` as a separate process, as on a separate machine (heartbeat 1 s
    unless `extra` says otherwise)."""

    def start(study: str, url: str, trials: int, cwd: Path, *extra: str) -> subprocess.Popen:
        beat = [] if "--heartbeat" in extra else ["--heartbeat", "1"]
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mnist_ladder",
                "sweep",
                "--study",
                study,
                "--trials",
                str(trials),
                "--storage",
                url,
                *TINY_SWEEP,
                *beat,
                *extra,
            ],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    return start


@contextlib.contextmanager
def ctrl_c_after_epochs(monkeypatch, epochs: int = 2):
    """Within it, `experiment.fit_seeds` raises KeyboardInterrupt after `epochs` epochs, as Ctrl-C
    would mid-run; the real `fit` is back afterwards."""
    from mnist_ladder.runs import experiment

    real_fit = experiment.fit_seeds

    def fit_then_ctrl_c(*a, **kw):
        for i, r in enumerate(real_fit(*a, **kw)):
            yield r
            if i == epochs - 1:
                raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "fit_seeds", fit_then_ctrl_c)
    try:
        yield
    finally:
        monkeypatch.setattr(experiment, "fit_seeds", real_fit)
