from __future__ import annotations

import copy
import json

import pytest
import torch

from mnist_ladder import steps
from mnist_ladder.engine import probe as layout
from mnist_ladder.engine import train as T

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MNIST_LADDER_CACHE", str(tmp_path / "cache"))


def _fit(step, data, recipe, name: str, amp: bool) -> list[T.EpochResult]:
    return list(T.fit(step, data, recipe, seed=3, amp=amp, layout=name))


@pytest.mark.parametrize("amp", [False, True])
def test_a_run_gives_the_same_numbers_in_every_layout(mnist, amp) -> None:
    import dataclasses

    step = steps.get("step6")
    recipe = dataclasses.replace(step.recipe, epochs=2)
    data = T.prepare(mnist, CPU, train_limit=1024, eval_limit=500)
    # between them these move every op a layout changes: convolutions, BatchNorm, max-pool
    runs = {name: _fit(step, data, recipe, name, amp) for name in ("cl", "cl+bn-nchw", "nchw+pool-cl")}
    ref = runs["cl"]
    for name, hist in runs.items():
        for a, b in zip(hist, ref, strict=True):
            # the same masks, augmentations and batches: only rounding differs
            for loss in ("train_loss", "test_loss"):
                assert getattr(a, loss) == pytest.approx(getattr(b, loss), rel=0.02 if amp else 3e-3)
            assert abs(a.test_acc - b.test_acc) <= 1.0, name  # 5 of the 500 test images


def test_the_probe_leaves_random_numbers_and_training_state_untouched(mnist) -> None:
    step = steps.get("step6")
    data = T.prepare(mnist, CPU, train_limit=256, eval_limit=10)
    state = T.new_state(step, step.recipe, data, 1, CPU)
    T.train(state, data, step.recipe, False)  # momentum buffers and BN statistics exist
    before = copy.deepcopy((state.model.state_dict(), state.optimizer.state_dict()))
    rng, gen = torch.get_rng_state(), state.generators[0].get_state()
    ms = layout.measure(step, step.recipe, CPU, False, data, rounds=1, steps_per_round=1)
    assert set(ms) == set(layout.LAYOUTS) and all(t > 0 for t in ms.values())
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(state.generators[0].get_state(), gen)
    after = (state.model.state_dict(), state.optimizer.state_dict())
    for k, v in before[0].items():
        assert torch.equal(after[0][k], v), k
    for i, s in before[1]["state"].items():
        assert torch.equal(after[1]["state"][i]["momentum_buffer"], s["momentum_buffer"])


def test_choose_measures_once_then_reads_the_cache(mnist, monkeypatch) -> None:
    step = steps.get("step13")
    data = T.prepare(mnist, CPU, train_limit=64, eval_limit=10)
    calls = []
    timings = {"cl": 2.0, "nchw": 1.0, "cl+bn-nchw": 3.0, "nchw+pool-cl": 4.0}
    monkeypatch.setattr(layout, "measure", lambda *a, **k: calls.append(1) or dict(timings))
    logged: list[str] = []
    for _ in range(2):
        assert (
            layout.choose(step, step.recipe, CPU, True, data, identity="probe-test", log=logged.append)
            == "nchw"
        )
    assert calls == [1] and "nchw" in logged[0]
    entry = json.loads(layout.cache_path().read_text())[layout.cache_key("probe-test")]
    assert entry["layout"] == "nchw" and entry["ms_per_step"]["cl"] == 2.0
    # another training identity (another precision, engine, network) is another entry,
    # measured anew; a layout within the margin of the default does not replace it
    timings.update(nchw=1.98)
    assert (
        layout.choose(step, step.recipe, CPU, False, data, identity="probe-fp32", log=logged.append) == "cl"
    )
    assert calls == [1, 1]
    # a choice measured by other engine code (an older checkout sharing the cache) has
    # another identity: measured anew
    timings.update(nchw=2.5, cl=1.0)
    assert (
        layout.choose(step, step.recipe, CPU, True, data, identity="older-engine", log=logged.append) == "cl"
    )
    assert calls == [1, 1, 1]


def test_layouts_keep_the_weights_loadable_and_bad_names_fail() -> None:
    step = steps.get("step12")
    torch.manual_seed(0)
    ref = step.build()
    for name in layout.LAYOUTS:
        model = T.build_model(step, CPU, name)
        model.load_state_dict(ref.state_dict())
        model.eval()
        ref.eval()
        x = torch.randn(4, 1, 28, 28)
        torch.testing.assert_close(model(x), ref(x))
    with pytest.raises(T.ConfigError, match="unknown layout"):
        layout.resolve("nhwc", step, step.recipe, CPU, False, None, identity="x")
