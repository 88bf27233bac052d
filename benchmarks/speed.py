"""Speed of the training pipeline, measured on this machine, in one run.

    python benchmarks/speed.py            # throughput, ratio to the per-image baseline, FLOPs
    python benchmarks/speed.py --full     # + a full 15-epoch Step 6 run: wall time, accuracy, RSS
    python benchmarks/speed.py --ablate   # + each layout / precision / threads / batch / compile
    python benchmarks/speed.py --profile  # + where a training step's time goes, in each layout

Every figure is measured here; comparisons are ratios taken within this one run, because
absolute seconds on a shared machine drift from run to run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mnist_ladder import steps
from mnist_ladder.engine import data
from mnist_ladder.engine import probe as layout
from mnist_ladder.engine import train as T
from mnist_ladder.engine.augment import SEED_AUGMENT, Augment
from mnist_ladder.engine.data import MEAN, STD

STEP = steps.get("step6")


def machine() -> str:
    cpu = (
        next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    # the model name alone ("AMD EPYC") hides what matters here: vector width and native bf16
    isa = torch.backends.cpu.get_cpu_capability()
    bf16 = "native bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no native bf16"
    return f"{cpu} ({isa}, {bf16}), {torch.get_num_threads()} threads, torch {torch.__version__}"


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def flops_per_image() -> int:
    """Forward + backward FLOPs of one Step 6 training image (torch's flop counter)."""
    model, x = STEP.build(), torch.randn(64, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.zeros(64, dtype=torch.long)).backward()
    return counter.get_total_flops() // 64


# ---------------------------------------------------------------- our pipeline


def choose_layout(step, recipe, device: torch.device, amp: bool, d) -> str:
    """`layout.choose`, cached under the identity a test-protocol run of `step` would have."""
    from mnist_ladder.runs.identity import training_identity

    identity = training_identity(step, None, recipe, "test", amp)
    return layout.choose(step, recipe, device, amp, d, identity=identity)


def chosen_layout(mnist: data.MNIST) -> str:
    """The layout a run of Step 6 would use here (measured once, then cached)."""
    device = torch.device("cpu")
    d = T.prepare(mnist, device, train_limit=STEP.recipe.batch_size, eval_limit=10)
    return choose_layout(STEP, STEP.recipe, device, T.pick_amp("auto", device), d)


def ours_images_per_s(
    mnist: data.MNIST,
    batches: int,
    *,
    batch_size: int = 128,
    layout_name: str = "cl",
    amp: bool | None = None,
    threads: int | None = None,
    compile_model: bool = False,
    augment: bool = True,
) -> float:
    """Training throughput (augmentation + forward + backward + step), one partial epoch;
    `augment=False` times the model's steps alone."""
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cpu")
    amp = T.pick_amp("auto", device) if amp is None else amp
    d = T.prepare(mnist, device, train_limit=batch_size * batches)
    recipe = dataclasses.replace(
        STEP.recipe, batch_size=batch_size, epochs=3, **({} if augment else {"augment": Augment()})
    )
    st = T.new_state(STEP, recipe, d, 1, device, layout_name)
    if compile_model:
        st.model = torch.compile(st.model)
    t0 = time.perf_counter()
    T.train(st, d, recipe, amp)
    warm = time.perf_counter() - t0  # first epoch: warm-up (and compile time, if any)
    t = time.perf_counter()
    T.train(st, d, recipe, amp)
    rate = batch_size * batches / (time.perf_counter() - t)
    torch.set_num_threads(old_threads)
    if compile_model:
        print(f"    (compile + first pass: {warm:.1f}s)")
    return rate


def eval_images_per_s(mnist: data.MNIST, layout_name: str) -> float:
    device = torch.device("cpu")
    amp = T.pick_amp("auto", device)
    d = T.prepare(mnist, device, train_limit=128)
    model = T.build_model(STEP, device, layout_name)
    x, y = d.eval_sets["test"]
    T.test(model, x, y, amp)
    t = time.perf_counter()
    T.test(model, x, y, amp)
    return len(y) / (time.perf_counter() - t)


# ---------------------------------------------------------------- the seed's pipeline


class SeedPipeline(torch.utils.data.Dataset):
    """The seed's per-image PIL pipeline (torchvision's transforms, written with PIL since
    torchvision is not installed): rotation, affine, colour jitter, to-tensor, normalize."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, seed: int = 1) -> None:
        self.images, self.labels = images.numpy(), labels
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def _affine(
        self, img: Image.Image, angle: float, tx: float, ty: float, scale: float, shear: float
    ) -> Image.Image:
        """torchvision's inverse affine matrix about the centre (shear along x), for PIL."""
        cx = cy = 14.0
        rot, sx = math.radians(angle), math.radians(shear)
        a, c = math.cos(rot), math.sin(rot)
        b = -math.cos(rot) * math.tan(sx) - math.sin(rot)
        d = -math.sin(rot) * math.tan(sx) + math.cos(rot)
        m = [v / scale for v in (d, -b, 0.0, -c, a, 0.0)]
        m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
        m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
        return img.transform(img.size, Image.Transform.AFFINE, m, Image.Resampling.NEAREST)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        r, a = self.rng, SEED_AUGMENT
        img = Image.fromarray(self.images[i], mode="L")
        img = img.rotate(r.uniform(-a.rotation, a.rotation), Image.Resampling.NEAREST, fillcolor=1)
        img = self._affine(
            img,
            r.uniform(-a.degrees, a.degrees),
            round(r.uniform(-2.8, 2.8)),
            round(r.uniform(-2.8, 2.8)),
            r.uniform(*a.scale),
            r.uniform(-a.shear, a.shear),
        )
        for enhance in r.permutation([0, 1]):
            cls = ImageEnhance.Brightness if enhance == 0 else ImageEnhance.Contrast
            img = cls(img).enhance(r.uniform(0.6, 1.4))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
        return (x - MEAN) / STD, int(self.labels[i])


def seed_images_per_s(mnist: data.MNIST, batches: int) -> float:
    """The seed's way on the CPU: DataLoader over the PIL pipeline, fp32, nn.Dropout."""
    ds = SeedPipeline(mnist.train_images[: 128 * batches], mnist.train_labels[: 128 * batches])
    loader = torch.utils.data.DataLoader(ds, batch_size=128, shuffle=True)
    torch.manual_seed(1)
    model = STEP.build()
    for m in model.modules():  # the stock dropout, as the seed had it
        for name, child in m.named_children():
            if isinstance(child, nn.Dropout):
                setattr(m, name, nn.Dropout(child.p))
    opt = torch.optim.SGD(model.parameters(), lr=0.015, momentum=0.7)
    model.train()
    t = time.perf_counter()
    for x, y in loader:
        loss = F.nll_loss(F.log_softmax(model(x), 1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return 128 * batches / (time.perf_counter() - t)


# ---------------------------------------------------------------- full run


def full_run_in_child(
    batch_size: int, *, step: str = "step6", seed: int = 1, epochs: int | None = None, src: Path | None = None
) -> dict:
    """A full run in a process of its own, so that its peak memory is its own; `src`: run
    another checkout's package (its `src` folder) with this script."""
    import json
    import os
    import subprocess

    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    args = ["--full-child", str(batch_size), "--child-step", step, "--child-seed", str(seed)]
    if epochs:
        args += ["--child-epochs", str(epochs)]
    r = subprocess.run(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, check=True, env=env
    )
    *_, last = r.stdout.strip().splitlines()
    return json.loads(last)


# (step, epochs, seeds) compared by --versus: Step 6's whole recipe over 3 seeds (time and
# accuracy), and the frontier steps' epoch time
VERSUS_RUNS = [("step6", 15, (1, 2, 3)), ("step12", 2, (1,)), ("step13", 2, (1,))]


def versus(ref: str) -> list[tuple[str, str]]:
    """This checkout against git `ref` (e.g. the commit before a speed change), in one run:
    full runs in child processes, alternating old and new run by run, so both see the same
    machine. The old code runs from a temporary `git worktree` of `ref`."""
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], check=True, stdout=subprocess.PIPE, text=True
        ).stdout.strip()

    ref = git("rev-parse", "--short", ref)  # names that last, in the table
    dirty = " + edits" if git("status", "--porcelain", "--", "src") else ""
    this = f"{git('rev-parse', '--short', 'HEAD')}{dirty}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(root), "worktree", "add", "--detach", "-q", str(base), ref], check=True
        )
        try:
            for step_name, epochs, seeds in VERSUS_RUNS:
                old, new = [], []
                for seed in seeds:
                    for label, src, out in (("old", base / "src", old), ("new", root / "src", new)):
                        r = full_run_in_child(
                            steps.get(step_name).recipe.batch_size,
                            step=step_name,
                            seed=seed,
                            epochs=epochs,
                            src=src,
                        )
                        out.append(r)
                        tree = ref if label == "old" else this
                        last3 = " / ".join(f"{v:.2f}" for v in r["last3"])
                        print(
                            f"  {step_name} seed {seed} {label} ({tree}): {r['wall_s']:.1f} s, "
                            f"epoch {r['epoch_s']:.2f} s, last 3 {last3}",
                            flush=True,
                        )
                ratio = statistics.mean(o["wall_s"] for o in old) / statistics.mean(n["wall_s"] for n in new)
                epoch_ratio = statistics.mean(o["epoch_s"] for o in old) / statistics.mean(
                    n["epoch_s"] for n in new
                )
                what = f"{step_name}, {epochs} epochs, {len(seeds)} seed(s)"
                rows.append(
                    (
                        f"{what}: wall s, {ref} -> {this}",
                        f"{statistics.mean(o['wall_s'] for o in old):.0f} -> "
                        f"{statistics.mean(n['wall_s'] for n in new):.0f} ({ratio:.2f}x)",
                    )
                )
                rows.append(
                    (
                        f"{step_name}: mean epoch s, {ref} -> {this}",
                        f"{statistics.mean(o['epoch_s'] for o in old):.2f} -> "
                        f"{statistics.mean(n['epoch_s'] for n in new):.2f} ({epoch_ratio:.2f}x)",
                    )
                )
                rows.append(
                    (
                        f"{step_name}: page faults a training step, {ref} -> {this}",
                        f"{statistics.mean(o['faults_per_step'] for o in old):,.0f} -> "
                        f"{statistics.mean(n['faults_per_step'] for n in new):,.0f}",
                    )
                )
                if epochs >= 3:
                    for label, runs in (("old", old), ("new", new)):
                        accs = [v for r in runs for v in r["last3"]]
                        rows.append(
                            (
                                f"{step_name}: test accuracy, last 3 epochs x seeds ({label})",
                                f"mean {statistics.mean(accs):.2f}, min {min(accs):.2f}",
                            )
                        )
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(base)], check=False)
    return rows


def full_recipe(batch_size: int):
    """Step 6's recipe at another batch size, OneCycle's peak scaled linearly with it."""
    r = STEP.recipe
    k = batch_size / r.batch_size
    return dataclasses.replace(r, batch_size=batch_size, lr=r.lr * k, max_lr=r.max_lr * k)


def full_run(
    mnist: data.MNIST, batch_size: int, step_name: str = "step6", seed: int = 1, epochs: int | None = None
) -> dict:
    """A test-protocol run of `step_name` (Step 6's recipe at `batch_size`), in the layout a
    run would choose; wall time from the data on, mean epoch time, last 3 test accuracies."""
    device = torch.device("cpu")
    amp = T.pick_amp("auto", device)
    t = time.perf_counter()
    d = T.prepare(mnist, device)
    step = steps.get(step_name)
    recipe = full_recipe(batch_size) if step_name == "step6" else step.recipe
    if epochs:
        recipe = dataclasses.replace(recipe, epochs=epochs)
    name = choose_layout(step, recipe, device, amp, d)
    hist = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for r in T.fit(step, d, recipe, seed=seed, amp=amp, layout=name):
        hist.append(r)
        print(f"    epoch {r.epoch:>2}: test {r.test_acc:.2f}%  {r.seconds:.1f}s", flush=True)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    steps_run = len(hist) * math.ceil(len(d.train_y) / recipe.batch_size)
    return {
        "wall_s": time.perf_counter() - t,
        "last3": [h.test_acc for h in hist[-3:]],
        "epoch_s": statistics.mean(h.seconds for h in hist),
        "faults_per_step": faults / steps_run,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def together_run(mnist: data.MNIST, seeds: int, epochs: int, amp: bool) -> dict:
    """Step 6's seeds 1..`seeds` trained together, packed (engine/pack.py), for `epochs`
    epochs of the test protocol: wall time from the data on, per-seed epoch time, peak RSS."""
    device = torch.device("cpu")
    t = time.perf_counter()
    d = T.prepare(mnist, device)
    recipe = dataclasses.replace(STEP.recipe, epochs=epochs)
    name = choose_layout(STEP, recipe, device, amp, d)
    epoch_s = []
    for results, _ in T.fit_seeds(STEP, d, recipe, seeds=list(range(1, seeds + 1)), amp=amp, layout=name):
        epoch_s.append(results[0].seconds)
    return {
        "wall_s": time.perf_counter() - t,
        "seed_epoch_s": statistics.mean(epoch_s) / seeds,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def together_table(epochs: int) -> list[tuple[str, str]]:
    """K = 1, 2, 5 seeds together, each in a process of its own (its peak memory its own),
    at the machine's precision and in fp32, against K separate runs (K x the K = 1 run)."""
    import json
    import subprocess

    rows = []
    for precision in ("auto", "off"):
        amp = T.pick_amp(precision, torch.device("cpu"))
        label = "bf16" if amp else "fp32"
        one = None
        for k in (1, 2, 5):
            r = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--together-child",
                    str(k),
                    "--child-epochs",
                    str(epochs),
                    "--child-precision",
                    precision,
                ],
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            )
            f = json.loads(r.stdout.strip().splitlines()[-1])
            one = one or f
            rows.append(
                (
                    f"{k} seed(s) of Step 6 together, {epochs} epoch(s), {label}: "
                    "wall / per-seed epoch / peak",
                    f"{f['wall_s']:.0f} s / {f['seed_epoch_s']:.2f} s / {f['rss_mib']:.0f} MiB",
                )
            )
            if k > 1:
                rows.append(
                    (
                        f"  against {k} separate runs ({k} x the 1-seed wall), {label}",
                        f"{k * one['wall_s']:.0f} s: {f['wall_s'] / one['wall_s']:.2f}x one seed's wall",
                    )
                )
    return rows


ABLATIONS = [
    ("fp32 instead of bf16", {"amp": False}),
    ("1 thread instead of 2", {"threads": 1}),
    ("batch 256", {"batch_size": 256}),
    ("batch 512", {"batch_size": 512}),
    ("torch.compile (steady state)", {"compile_model": True}),
]


def ablations(mnist: data.MNIST, batches: int, reps: int, chosen: str) -> list[tuple[str, str]]:
    """Each choice against the default (the chosen layout), interleaved: every rep measures
    the default and then the alternative back to back, and the ratio is taken within the rep
    (this VM's speed drifts by +-20% over minutes; ratios of neighbours drift far less).
    Medians over reps, of the ratios and of both rates, so each row's numbers agree."""
    print("ablations (ratio to the default measured just before, median of reps):")
    alternatives = [
        (f"layout {name} instead of {chosen}", {"layout_name": name})
        for name in layout.LAYOUTS
        if name != chosen
    ] + ABLATIONS
    rows = []
    for label, kw in alternatives:
        base_rates, alt_rates, ratios = [], [], []
        for _ in range(reps):
            base_rates.append(ours_images_per_s(mnist, batches, layout_name=chosen))
            alt_rates.append(ours_images_per_s(mnist, batches, **{"layout_name": chosen, **kw}))
            ratios.append(alt_rates[-1] / base_rates[-1])
        ratio, spread = statistics.median(ratios), f"{min(ratios):.2f}-{max(ratios):.2f}"
        rows.append(
            (
                f"ablation: {label}",
                f"{statistics.median(alt_rates):,.0f} vs {statistics.median(base_rates):,.0f} "
                f"img/s, {ratio:.2f}x (reps {spread})",
            )
        )
        print(f"  {label}: {ratio:.2f}x ({spread})", flush=True)
    return rows


def profile_layouts(mnist: data.MNIST, chosen: str, steps_: int = 20, top: int = 8) -> None:
    """Where a training step's time goes in each layout: torch.profiler's top ops by their
    own CPU time, per step, on real images without augmentation (the model's work alone)."""
    from torch.profiler import profile

    device = torch.device("cpu")
    amp = T.pick_amp("auto", device)
    d = T.prepare(mnist, device, train_limit=STEP.recipe.batch_size, eval_limit=10)
    x, y = T.normalize(T.to_unit(d.train_x)), d.train_y
    for name in [chosen, *(n for n in layout.LAYOUTS if n != chosen)]:
        torch.manual_seed(1)
        model = T.build_model(STEP, device, name).train()
        opt = T.make_optimizer(model, STEP.recipe)

        def train_step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            with T.autocast(device, amp):
                logits = model(x)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(logits.float(), y).backward()
            opt.step()

        for _ in range(5):
            train_step()
        with profile() as prof:
            for _ in range(steps_):
                train_step()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        print(
            f"layout {name}{' (chosen)' if name == chosen else ''}: "
            f"{total / steps_ / 1e3:.1f} ms of op time a step"
        )
        for e in events[:top]:
            print(
                f"  {e.key:<40} {e.self_cpu_time_total / steps_ / 1e3:6.2f} ms "
                f"{100 * e.self_cpu_time_total / total:4.0f}%  {e.count // steps_:>3} calls"
            )
    sys.stdout.flush()


def median_rate(fn, reps: int) -> float:
    return statistics.median(fn() for _ in range(reps))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="also time a full 15-epoch Step 6 run")
    ap.add_argument("--ablate", action="store_true", help="also measure each speed choice")
    ap.add_argument(
        "--profile", action="store_true", help="also print the top ops of a training step in each layout"
    )
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--full-batches",
        default="128",
        help="batch sizes for --full, comma-separated (128 is Step 6's own recipe; "
        "others scale OneCycle's peak linearly)",
    )
    ap.add_argument("--full-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-step", default="step6", help=argparse.SUPPRESS)
    ap.add_argument("--child-seed", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--child-epochs", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--together-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-precision", default="auto", help=argparse.SUPPRESS)
    ap.add_argument(
        "--together",
        type=int,
        metavar="EPOCHS",
        help="also time 1, 2 and 5 Step 6 seeds trained together for EPOCHS epochs (15: the target's)",
    )
    ap.add_argument("--together-only", action="store_true", help="with --together: that table alone")
    ap.add_argument(
        "--versus",
        metavar="GIT_REF",
        help="also run Step 6 (15 epochs, 3 seeds) and Steps 12, 13 (2 epochs) with "
        "this tree and with GIT_REF, alternately, and print the speed-ups",
    )
    ap.add_argument(
        "--write-docs",
        "--write-readme",
        dest="write_docs",
        action="store_true",
        help="put the table into docs/speed.md between its bench markers",
    )
    a = ap.parse_args()
    mnist = data.load()
    if a.full_child is not None:
        import json

        print(json.dumps(full_run(mnist, a.full_child, a.child_step, a.child_seed, a.child_epochs)))
        return
    if a.together_child is not None:
        import json

        amp = T.pick_amp(a.child_precision, torch.device("cpu"))
        print(json.dumps(together_run(mnist, a.together_child, a.child_epochs or 15, amp)))
        return
    print(f"machine: {machine()}")
    if a.together:
        print(f"seeds together, {a.together} epoch(s) each:")
        together = together_table(a.together)
        print("\n".join(f"| {k} | {v} |" for k, v in together))
        if a.write_docs:  # a table of its own on the page: it needs no rerun of the others
            write_docs(
                ["| measure | value |", "|---------|-------|", *(f"| {k} | {v} |" for k, v in together)],
                "together",
            )
        if a.together_only:
            return
    chosen = chosen_layout(mnist)
    print(f"layout: {chosen} (layout.choose, cached in {layout.cache_path()})")
    if a.profile:
        profile_layouts(mnist, chosen)
    peak32, peak16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    flops = flops_per_image()
    ours = median_rate(lambda: ours_images_per_s(mnist, a.batches, layout_name=chosen), a.reps)
    seed = median_rate(lambda: seed_images_per_s(mnist, a.batches // 3), a.reps)
    model_only = median_rate(
        lambda: ours_images_per_s(mnist, a.batches, layout_name=chosen, augment=False), a.reps
    )
    ev = eval_images_per_s(mnist, chosen)
    achieved = ours * flops / 1e9
    amp = T.pick_amp("auto", torch.device("cpu"))
    peak = peak16 if amp else peak32
    rows = [
        ("train images/s, ours (batched aug, in memory)", f"{ours:,.0f}"),
        ("train images/s, seed's per-image PIL pipeline", f"{seed:,.0f}"),
        ("ratio ours / per-image", f"{ours / seed:.1f}x"),
        ("train images/s, ours without augmentation (the model's steps alone)", f"{model_only:,.0f}"),
        (
            "ceiling on the ratio with free augmentation (model alone / per-image)",
            f"{model_only / seed:.1f}x",
        ),
        ("eval images/s", f"{ev:,.0f}"),
        ("precision", "bf16 autocast" if amp else "fp32"),
        ("memory layout (measured by layout.choose)", chosen),
        ("model FLOPs per image, forward + backward", f"{flops / 1e6:.2f} M"),
        ("achieved GFLOP/s (model FLOPs x train images/s)", f"{achieved:.1f}"),
        ("measured matmul GFLOP/s fp32 / bf16", f"{peak32:.0f} / {peak16:.0f}"),
        ("fraction of matmul peak (same precision)", f"{100 * achieved / peak:.1f}%"),
    ]
    if a.ablate:
        rows += ablations(mnist, a.batches, a.reps, chosen)
    if a.full:
        for bs in (int(b) for b in a.full_batches.split(",")):
            r = full_recipe(bs)
            what = (
                "Step 6's recipe"
                if bs == STEP.recipe.batch_size
                else (f"batch {bs}, OneCycle peak {r.max_lr:g}")
            )
            print(f"full Step 6 run, 15 epochs, {what}:")
            f = full_run_in_child(bs)
            rows += [
                (f"Step 6, 15 epochs, train + test every epoch ({what})", f"{f['wall_s']:.0f} s"),
                ("test accuracy, last 3 epochs", " / ".join(f"{v:.2f}" for v in f["last3"])),
                ("peak resident memory of that run (its own process)", f"{f['rss_mib']:.0f} MiB"),
            ]
    if a.versus:
        print(f"this tree against {a.versus}, full runs alternating:")
        rows += versus(a.versus)
    width = max(len(k) for k, _ in rows)
    table = [f"| {'measure':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    table += [f"| {k:<{width}} | {v} |" for k, v in rows]
    print("\n" + "\n".join(table))
    sys.stdout.flush()
    if a.write_docs:
        write_docs(table)


def write_docs(table: list[str], marker: str = "bench") -> None:
    page = Path(__file__).resolve().parents[1] / "docs" / "speed.md"
    text = page.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    stamp = f"Measured {time.strftime('%Y-%m-%d')} on: {machine()}"
    page.write_text(f"{head}{start}\n{stamp}\n\n" + "\n".join(table) + f"\n{end}{tail}")


if __name__ == "__main__":
    main()
