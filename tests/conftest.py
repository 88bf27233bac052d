"""Shared fixtures: the real MNIST, loaded once (fetched and verified on first use)."""

from __future__ import annotations

import pytest
import torch

from mnist_ladder import data


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
    from mnist_ladder import experiment, steps
    from mnist_ladder.store import Store

    root = tmp_path_factory.mktemp("trained")
    spec = experiment.make_spec(steps.get("step6"), seed=1, epochs=4, train_limit=30_000)
    with Store(root / "ladder.db") as store:
        row = experiment.execute(spec, mnist, store, root / "runs", device=torch.device("cpu"),
                                 amp=True, log=lambda s: None)
    return root / "ladder.db", row
