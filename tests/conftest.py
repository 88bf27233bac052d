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
