"""The sweep against real storages: a throw-away PostgreSQL cluster on a loopback port, and
the SQLite default. Workers are separate processes, as on separate machines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from mnist_ladder.runs import results, sweep


@pytest.fixture(params=["postgresql", "sqlite"])
def storage_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sweeps.db'}"
    return request.getfixturevalue("postgres_url")


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [t for t in study.trials if t.state in done]


def test_two_workers_share_one_study(storage_url: str, tmp_path: Path, mnist, sweep_worker) -> None:
    name = f"two-{time.time_ns()}"
    procs = [sweep_worker(name, storage_url, 6, tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    study = sweep.load_study(name, storage_url)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert optuna.trial.TrialState.FAIL not in states
    assert 6 <= len(finished(study)) <= 7  # both may start the last one at once
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and all(0.0 < t.value <= 100.0 for t in complete)  # val accuracy, %
    workers = {t.user_attrs["worker"] for t in study.trials if "worker" in t.user_attrs}
    assert len(workers) == 2  # both processes took trials
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(params) == len(set(params))  # no trial ran twice


def test_killed_worker_trial_is_retried_not_lost(
    storage_url: str, tmp_path: Path, mnist, sweep_worker
) -> None:
    name = f"kill-{time.time_ns()}"
    same_command = ["--fix", "n_convs2=4", "--fix", "batch_size=64", "--budget", "100000"]
    victim = sweep_worker(name, storage_url, 3, tmp_path, *same_command)
    study = None
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            study = sweep.load_study(name, storage_url)
            running = [
                t
                for t in study.trials
                if t.state == optuna.trial.TrialState.RUNNING
                and t.user_attrs.get("worker", "").endswith(f":{victim.pid}")
            ]
            if running:
                break
        except sweep.SweepError:
            pass
        time.sleep(0.2)
    else:
        pytest.fail("the first worker never started a trial")
    killed = running[0].number
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    time.sleep(4)  # past the grace period of 3 heartbeats
    rescuer = sweep_worker(name, storage_url, 3, tmp_path, *same_command)
    out = rescuer.communicate(timeout=600)[0]
    assert rescuer.returncode == 0, out
    study = sweep.load_study(name, storage_url)
    by_number = {t.number: t for t in study.trials}
    assert by_number[killed].state == optuna.trial.TrialState.FAIL
    retries = [
        t
        for t in study.trials
        if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed
    ]
    assert len(retries) == 1 and retries[0].state == optuna.trial.TrialState.COMPLETE
    assert retries[0].params == by_number[killed].params
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in study.trials]
    assert len(finished(study)) == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--study", "x", "--storage", "postgresql+psycopg2://nobody@127.0.0.1:1/none"],
            "cannot use storage",
        ),
        (["--study", "x", "--storage", "nosuchdb://here"], "cannot use storage"),
        (["--study", "x", "--budget", "50"], "no configuration meets the budget"),
        (["--study", "x", "--fix", "c9=3"], "use NAME=VALUE"),
        (["--study", "x", "--fix", "c1=999"], "lies in"),
        (["report", "nope"], "no study 'nope'"),
    ],
)
def test_bad_sweep_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mnist_ladder", "sweep", *args, "--db", str(tmp_path / "l.db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_pareto_front() -> None:
    assert results.pareto_front([(5, 90.0), (3, 80.0), (4, 85.0), (6, 89.0), (7, 95.0)]) == [
        (3, 80.0),
        (4, 85.0),
        (5, 90.0),
        (7, 95.0),
    ]


def test_one_pareto_front_for_the_sweep_and_the_report_ties_included() -> None:
    from mnist_ladder.views import report

    assert sweep.pareto_front is results.pareto_front is report.pareto_front
    # two networks of one size: the more accurate speaks for it, once
    assert results.pareto_front([(4, 85.0), (4, 90.0), (3, 80.0)]) == [(3, 80.0), (4, 90.0)]
    # a tie in accuracy goes to the smaller network
    assert results.pareto_front([(5, 90.0), (3, 90.0), (7, 95.0)]) == [(3, 90.0), (7, 95.0)]
