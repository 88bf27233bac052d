"""Figures of what a trained network sees: its first kernels, one digit's feature maps through
every convolution, saliency on the digits it gets wrong, and its receptive field layer by
layer. Every function takes a model (any of the ladder's networks, in eval mode or not) and
MNIST images as the data set holds them (uint8 [N, 28, 28]) or in [0, 1] ([N, 1, 28, 28]).
Each `plot_*` returns its figure (a notebook shows it) and writes it as a PNG when given a
path; the report (report.py) and `ladder show RUN --figures DIR` write all four.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from ..core.files import safe_name, save_figure
from ..engine.train import normalize, to_unit
from .summary import Field, layer_rows

DPI = 120  # reads on a laptop screen: the report's figures (report.py imports it) and these
SPATIAL = 28
FIGURES = ("kernels", "feature-maps", "saliency", "receptive-field")  # write_figures' names


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[torch.device]:
    """Eval mode (BatchNorm's running statistics, no dropout) for the figure, the model's
    own mode back afterwards; yields the device its weights are on."""
    was = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was)


def _unit(images: torch.Tensor) -> torch.Tensor:
    """Images as the data set holds them (uint8) or already in [0, 1] -> float [N, 1, 28, 28]."""
    if images.dtype == torch.uint8:
        return to_unit(images)
    return images.float().reshape(-1, 1, SPATIAL, SPATIAL)


class Shown(Figure):
    """A figure of its own, drawn by Agg, outside pyplot: no global state in a report, and in
    a notebook it shows once, where it is returned (not again at the cell's end), whatever
    backend is active: IPython shows any object with a `_repr_png_`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        FigureCanvasAgg(self)

    def _repr_png_(self) -> bytes:
        out = io.BytesIO()
        self.savefig(out, format="png", dpi=DPI)
        return out.getvalue()


def _done(fig: Figure, path: Path | None) -> Figure:
    if path is not None:
        save_figure(fig, path, DPI)
    return fig


def convolutions(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every Conv2d, in module order (the order they run in the ladder's sequential nets)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


# ---------------------------------------------------------------- the first layer's kernels


def plot_kernels(model: nn.Module, path: Path | None = None, max_kernels: int = 64) -> Figure:
    """The first convolution's kernels, one small image each, on one diverging scale (blue
    negative, red positive) so that their strengths compare. A first layer with several input
    channels (or groups) shows each (output, input) kernel; at most `max_kernels`."""
    convs = convolutions(model)
    if not convs:
        raise ValueError("the model has no convolution: no kernels to draw")
    name, conv = convs[0]
    w = conv.weight.detach().float().cpu()
    out_c, in_c, kh, kw = w.shape
    tiles = w.reshape(out_c * in_c, kh, kw)[:max_kernels]
    cols = min(len(tiles), 8 if in_c == 1 else in_c)
    rows = math.ceil(len(tiles) / cols)
    scale = w.abs().max().item() or 1.0
    fig = Shown(figsize=(0.9 * cols + 1.4, 0.95 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    shown = None
    for i, (ax, tile) in enumerate(zip(axes.flat, tiles, strict=False)):
        shown = ax.imshow(tile.numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale)
        label = f"{i // in_c}" if in_c == 1 else f"{i // in_c}←{i % in_c}"
        ax.set_title(label, fontsize=7)
    fig.colorbar(shown, ax=axes, shrink=0.9, label="weight")
    more = f", first {len(tiles)} of {out_c * in_c}" if out_c * in_c > len(tiles) else ""
    fig.suptitle(
        f"first convolution ({name}): {out_c} kernel(s) {kh}x{kw} on {in_c} input channel(s){more}",
        fontsize=9,
    )
    return _done(fig, path)


# ---------------------------------------------------------------- feature maps


Maps = list[tuple[str, nn.Conv2d, torch.Tensor]]


def feature_maps(model: nn.Module, image: torch.Tensor) -> tuple[Maps, torch.Tensor]:
    """One digit through the network: every Conv2d's output ([C, H, W], caught by forward
    hooks, in the order they ran) with its name and module, and the logits."""
    caught: Maps = []
    hooks = [
        conv.register_forward_hook(
            lambda m, _inp, out, name=name: caught.append((name, m, out[0].detach().float().cpu()))
        )
        for name, conv in convolutions(model)
    ]
    try:
        with _evaluating(model) as device, torch.no_grad():
            logits = model(normalize(_unit(image)[:1]).to(device))
    finally:
        for h in hooks:
            h.remove()
    return caught, logits[0].float().cpu()


def plot_feature_maps(
    model: nn.Module, image: torch.Tensor, path: Path | None = None, channels: int = 8
) -> Figure:
    """One test digit through every convolution: a row per Conv2d with its first `channels`
    maps, each on its own symmetric scale (red: positive, blue: negative, before the ReLU
    and BatchNorm that follow), titled with the layer and the map size. A 1x1 map (after
    global pooling) is drawn as the channel values."""
    maps, logits = feature_maps(model, image)
    rows = len(maps) + 1
    fig = Shown(figsize=(1.05 * channels + 1.6, 1.2 * rows + 0.5))
    grid = fig.add_gridspec(rows, channels)
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(_unit(image)[0, 0].numpy(), cmap="gray_r")
    ax.set_title(f"input: predicted {int(logits.argmax())}", fontsize=7)
    ax.axis("off")
    for r, (name, conv, out) in enumerate(maps, start=1):
        c, h, w = out.shape
        kind = "depthwise " if conv.groups > 1 else ""
        label = f"conv {r} ({name}, {kind}{conv.kernel_size[0]}x{conv.kernel_size[1]}): {c}x{h}x{w}"
        if h * w == 1:  # a vector: one bar per channel across the row
            ax = fig.add_subplot(grid[r, :])
            values = out.flatten().numpy()
            ax.bar(range(c), values, color=["firebrick" if v > 0 else "steelblue" for v in values])
            ax.axhline(0, color="gray", lw=0.5)
            ax.set_xticks(range(c) if c <= 32 else [])
            ax.tick_params(labelsize=6)
            ax.set_title(label + (" (the logits)" if r == len(maps) else ""), fontsize=7, loc="left")
            continue
        for j in range(min(c, channels)):
            ax = fig.add_subplot(grid[r, j])
            scale = out[j].abs().max().item() or 1.0
            ax.imshow(out[j].numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                shown = f" ({channels} of {c})" if c > channels else ""
                ax.set_title(label + shown, fontsize=7, loc="left")
    fig.suptitle(
        "one test digit through every convolution (each map on its own scale; red positive, blue negative)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return _done(fig, path)


# ---------------------------------------------------------------- saliency


def saliency(
    model: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    samples: int = 16,
    noise: float = 0.15,
    seed: int = 0,
) -> torch.Tensor:
    """|d logit[target] / d pixel| per image, [N, 1, 28, 28], averaged over `samples` copies
    with Gaussian noise (SmoothGrad, Smilkov et al. 2017), in [0, 1] pixel units.

    Why gradient saliency and not Grad-CAM: the ladder's last maps with spatial extent are
    5x5 to 6x6 (3x3 for Step 0), so a Grad-CAM map is a few blocks blown up to 28x28, too
    coarse to point at the stroke that made a 4 look like a 9; the input gradient is per pixel
    and needs no choice of layer. Plain gradients of ReLU networks are speckled; averaging
    over a few noisy copies keeps what is stable. The noise is seeded: the same map each time.
    """
    x = _unit(images)
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros_like(x)
    with _evaluating(model) as device:
        for _ in range(samples):
            noisy = (x + noise * torch.randn(x.shape, generator=gen)).to(device).requires_grad_()
            logits = model(normalize(noisy))
            chosen = logits.gather(1, target.to(device).view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(chosen, noisy)
            total += grad.abs().cpu()
    return total / samples


def plot_saliency(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    preds: torch.Tensor,
    path: Path | None = None,
    n: int = 10,
) -> Figure:
    """The first `n` misclassified digits (predicted != true): each digit, and under it what
    drove the wrong answer, the saliency of the wrongly predicted class over the digit."""
    wrong = (preds != labels).nonzero().flatten()[:n]
    cols = max(1, min(n, len(wrong)))
    fig = Shown(figsize=(1.25 * cols + 0.4, 3.3))
    axes = fig.subplots(2, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if len(wrong) == 0:
        axes[0, 0].text(0.5, 0.5, "no misclassified digits", ha="center", va="center")
    else:
        x = _unit(images[wrong])
        maps = saliency(model, x, preds[wrong])
        for j, i in enumerate(wrong.tolist()):
            digit = x[j, 0].numpy()
            axes[0, j].imshow(digit, cmap="gray_r")
            axes[0, j].set_title(
                f"pred {int(preds[i])} (true {int(labels[i])})", fontsize=7, color="firebrick"
            )
            heat = maps[j, 0] / (maps[j, 0].max() or 1.0)
            axes[1, j].imshow(digit, cmap="gray")
            axes[1, j].imshow(heat.numpy(), cmap="inferno", alpha=0.65, vmin=0, vmax=1)
            axes[1, j].set_title(f"what says {int(preds[i])}", fontsize=7)
    fig.suptitle(
        f"{int((preds != labels).sum())} misclassified: saliency of the wrong class "
        "(|gradient| of its score per pixel, SmoothGrad; bright = strong)",
        fontsize=8,
    )
    fig.tight_layout()
    return _done(fig, path)


# ---------------------------------------------------------------- receptive field


def receptive_fields(model: nn.Module) -> list[tuple[str, Field]]:
    """The layers that widen what a unit sees (a window over 1 pixel: 3x3 convolutions,
    pooling, global pooling), each with its field, from the layer table's own computation."""
    return [
        (f"{r.index} {r.name} {r.field.kernel}x{r.field.kernel}", r.field)
        for r in layer_rows(model)
        if r.field.kernel > 1
    ]


def plot_receptive_field(
    model: nn.Module, path: Path | None = None, image: torch.Tensor | None = None
) -> Figure:
    """How much of the 28x28 input one unit sees, layer by layer: a panel per layer that
    widens the field, the centre unit's field filled over the digit and the earlier ones
    outlined inside it (a field larger than the input reaches into the padding)."""
    found = receptive_fields(model)
    digit = _unit(image)[0, 0].numpy() if image is not None else torch.zeros(SPATIAL, SPATIAL).numpy()
    cols = max(1, min(len(found), 6))
    rows = max(1, math.ceil(len(found) / cols))
    fig = Shown(figsize=(2.0 * cols, 2.25 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    reach = max(
        [SPATIAL / 2]
        + [
            max(abs(f.centre_unit() - f.rf / 2 - SPATIAL / 2), abs(f.centre_unit() + f.rf / 2 - SPATIAL / 2))
            for _, f in found
        ]
    )
    colours = matplotlib.colormaps["viridis"]
    for i, (ax, (label, f)) in enumerate(zip(axes.flat, found, strict=False)):
        ax.imshow(digit, cmap="gray_r", extent=(0, SPATIAL, SPATIAL, 0))
        ax.add_patch(Rectangle((0, 0), SPATIAL, SPATIAL, fill=False, ec="gray", lw=0.6))
        for k, (_, g) in enumerate(found[: i + 1]):  # the field so far, nested squares
            c = g.centre_unit() - g.rf / 2
            last = k == i
            ax.add_patch(
                Rectangle(
                    (c, c),
                    g.rf,
                    g.rf,
                    fill=last,
                    alpha=0.35 if last else 1,
                    color=colours(k / max(1, len(found) - 1)),
                    lw=1.5 if last else 0.6,
                )
            )
        ax.set_xlim(SPATIAL / 2 - reach - 0.5, SPATIAL / 2 + reach + 0.5)
        ax.set_ylim(SPATIAL / 2 + reach + 0.5, SPATIAL / 2 - reach - 0.5)
        ax.set_title(
            f"{label}\nRF {f.rf}x{f.rf} ({100 * min(f.rf, SPATIAL) ** 2 / SPATIAL**2:.0f}% of the input)",
            fontsize=7,
        )
    fig.suptitle(
        "receptive field: how much of the 28x28 input one unit sees (the centre unit), layer by layer",
        fontsize=9,
    )
    fig.tight_layout()
    return _done(fig, path)


# ---------------------------------------------------------------- all four


def write_figures(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    preds: torch.Tensor,
    folder: Path,
    prefix: str = "",
) -> dict[str, Path]:
    """The four figures into `folder` as PREFIXkernels.png, PREFIXfeature-maps.png (the first
    image), PREFIXsaliency.png and PREFIXreceptive-field.png (on the first image). A model
    without a convolution is a ValueError."""
    folder = Path(folder)
    if prefix:
        safe_name(prefix, "a figure prefix")
    out = {name: folder / f"{prefix}{name}.png" for name in FIGURES}
    plot_kernels(model, out["kernels"])
    plot_feature_maps(model, images[0], out["feature-maps"])
    plot_saliency(model, images, labels, preds, out["saliency"])
    plot_receptive_field(model, out["receptive-field"], images[0])
    return out
