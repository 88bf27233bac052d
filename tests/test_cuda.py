"""On a GPU: the paths a `--device cuda` run takes (data, augmentation and bf16 autocast on the
device, the command line, a checkpoint resumed). Skipped without CUDA: every other test trains
on the CPU. `benchmarks/gpu_check.sh` runs this file on a GPU machine."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import ctrl_c_after_epochs
from mnist_ladder import steps
from mnist_ladder.engine import augment as aug
from mnist_ladder.engine import train as T
from mnist_ladder.runs import experiment
from mnist_ladder.runs.store import Store

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda")


def bf16(device: torch.device) -> bool:
    return device.type == "cpu" or torch.cuda.is_bf16_supported()


def test_step6_learns_on_the_device_with_its_augmentation_under_bf16(mnist, device) -> None:
    step = steps.get("step6")
    recipe = dataclasses.replace(step.recipe, epochs=4)
    assert recipe.augment.geometric and recipe.augment.photometric  # augments on the device
    if not bf16(device):
        pytest.skip("this GPU has no bf16")
    data = T.prepare(mnist, device, train_limit=512, eval_limit=500)
    assert data.train_x.device.type == device.type and data.train_y.device.type == device.type
    assert all(x.device.type == device.type for x, _ in data.eval_sets.values())

    x = T.to_unit(data.train_x[:64])
    out = aug.augment(x, recipe.augment, torch.Generator(device=device).manual_seed(0))
    assert out.device.type == device.type and out.shape == x.shape and not torch.equal(out, x)

    state = T.new_state(step, recipe, data, 1, device)
    assert state.generators[0].device.type == device.type
    seen: list[tuple[torch.device, torch.dtype, torch.dtype]] = []
    first_conv = next(m for m in state.model.modules() if isinstance(m, nn.Conv2d))

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if module.training:  # a training batch: (its device, its dtype, the conv's output dtype)
            seen.append((inputs[0].device, inputs[0].dtype, output.dtype))

    first_conv.register_forward_hook(record)
    hist = list(T.fit(step, data, recipe, seed=1, amp=True, state=state))
    assert len(hist) == 4 and len(seen) == 4 * 4  # 512 images, batch 128, 4 epochs
    assert {d.type for d, _, _ in seen} == {device.type}
    assert {(i, o) for _, i, o in seen} == {(torch.float32, torch.bfloat16)}  # autocast is on
    assert hist[-1].train_loss < hist[0].train_loss, [h.train_loss for h in hist]
    assert all(p.device.type == device.type for p in state.model.parameters())


def test_command_line_run_on_the_device(tmp_path: Path, mnist, device) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_ladder",
            "run",
            "step6",
            "--device",
            device.type,
            "--epochs",
            "2",
            "--train-limit",
            "2000",
            "--eval-limit",
            "1000",
            "--db",
            str(tmp_path / "gpu.db"),
            "--out",
            str(tmp_path / "runs"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert f"device {device.type}" in r.stdout and "epoch  2/2" in r.stdout
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["device"].startswith(device.type) and config["amp"] == int(bf16(device))
    assert [m["epoch"] for m in json.loads((run_dir / "metrics.json").read_text())] == [1, 2]
    # A checkpoint written from the device loads safely on a machine without one.
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert len(ckpt["state"]["history"]) == 2
    (row,) = Store(tmp_path / "gpu.db").runs()
    assert row.status == "finished" and row.device.startswith(device.type)


def test_an_interrupted_run_resumes_on_the_device(tmp_path: Path, mnist, monkeypatch, device) -> None:
    """Step 7: its weight average, Nesterov momentum and device-side random state resume too.
    Not compared bit for bit: some CUDA kernels (GAP's backward) add in no fixed order."""
    store = Store(tmp_path / "l.db")
    spec = experiment.make_spec(steps.get("step7"), seed=7, epochs=3, train_limit=2_000, eval_limit=500)
    full = experiment.execute(
        spec, mnist, store, tmp_path, device=device, amp=bf16(device), log=lambda s: None
    )
    with ctrl_c_after_epochs(monkeypatch), pytest.raises(KeyboardInterrupt):
        experiment.execute(spec, mnist, store, tmp_path, device=device, amp=bf16(device), log=lambda s: None)
    (cut,) = [r for r in store.runs() if r.id != full.id]
    assert cut.effective_status == "interrupted" and len(store.epochs(cut.id)) == 2
    resumed = experiment.execute(
        spec, mnist, store, tmp_path, device=device, amp=bf16(device), resume=cut, log=lambda s: None
    )
    a, b = store.epochs(full.id), store.epochs(resumed.id)
    assert [e["epoch"] for e in b] == [1, 2, 3]
    assert abs(a[-1]["test_acc"] - b[-1]["test_acc"]) <= 3.0, (a[-1], b[-1])
    assert store.run(resumed.id).status == "finished"
