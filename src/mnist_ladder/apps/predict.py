"""Use a trained model on your own digit images.

MNIST-style preprocessing, as the data set itself was made: grayscale; invert when the
background is light; stretch so background is 0 and ink is 1; crop to the digit's bounding
box; fit into 20x20 keeping the aspect ratio; place in 28x28 so that the centre of mass sits
at the centre.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from ..core.errors import LadderError
from ..core.files import write_atomic
from ..engine.data import MEAN, STD
from ..runs.experiment import WEIGHTS, RunError, weights_file
from ..runs.store import StoreError

MAX_PIXELS = 40_000_000  # refused before decoding: a 20,000 x 20,000 image is 400M pixels
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own bomb check, at the same limit
NON_FINITE = "the model's output is not finite (NaN or infinity): no prediction"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"}


class PredictError(LadderError, ValueError):
    """A bad image or model: one line for the user."""


# ---------------------------------------------------------------- the model


def resolve_run(run: str, stores, say=None) -> Path:
    """A run id, a run folder, a weights file, or `best` -> the weights file. `stores`: a
    Store or Stores to look run ids up in; `say` is told which run `best` chose, and why."""
    p = Path(run)
    if p.is_file():
        return p
    if p.is_dir():
        if (p / WEIGHTS).is_file():
            return p / WEIGHTS
        raise PredictError(f"{p}: no {WEIGHTS} in this folder (did the run finish?)")
    try:
        if run == "best":
            from ..runs.catalog import catalog
            from ..runs.results import best_run

            found = best_run(stores, list(catalog()))
            if found is None:
                raise PredictError(
                    "no step under 8,000 parameters has 3 or more finished "
                    "test-protocol seeds in the stores; give a run id instead"
                )
            row, why = found
            if say:
                say(why)
        else:
            row = stores.run(run)
        weights = weights_file(row, stores)
    except StoreError as e:
        raise PredictError(f"{run!r} is not a file, a run folder or a run id ({e})") from e
    except RunError as e:
        raise PredictError(str(e)) from None
    if weights is None:
        raise PredictError(
            f"run {row.id} has no weights at {Path(row.run_dir) / WEIGHTS} "
            f"nor in the store (status {row.effective_status})"
        )
    return weights


class WithNormalization(nn.Module):
    """Takes images in [0, 1], as a user has them; the seed's normalization is inside."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - MEAN) / STD)


# ---------------------------------------------------------------- images


def open_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise PredictError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise PredictError(f"{path}: empty file")
    return decode_image(path, str(path))


def decode_image(source: Path | BinaryIO, name: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A file or the bytes of an upload -> a loaded image; `name` starts each error. Images
    over `max_pixels` are refused from their header, before any decoding; Pillow's own bomb
    warning (between its limit and twice it) is not printed: our limit is below it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)  # reads the header only
    except UnidentifiedImageError:
        raise PredictError(f"{name}: not an image (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError:
        raise PredictError(f"{name}: over the {MAX_PIXELS:,}-pixel limit; crop or shrink it first") from None
    except OSError as e:
        raise PredictError(f"{name}: cannot open ({e})") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise PredictError(f"{name}: {w}x{h} is over the {max_pixels:,}-pixel limit; crop or shrink it first")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except (OSError, SyntaxError, ValueError) as e:
        img.close()
        raise PredictError(f"{name}: damaged or truncated image ({e})") from None
    return img


def to_gray(img: Image.Image) -> np.ndarray:
    """float [H, W] in [0, 1], from any mode Pillow opens.

    Transparency: the image is composited by its alpha onto paper of the opposite lightness
    to its ink (the visible pixels' mean), so that a digit drawn on a transparent background
    is a digit in any ink colour, and where the colour carries nothing (black, or the same
    colour everywhere) the alpha channel alone draws it. More than 8 bits (16-bit 'I;16',
    32-bit 'I', float 'F'): stretched from the image's own range, since what matters to
    the preprocessing is ink against background, not absolute levels."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        x = np.asarray(img, dtype=np.float64)
        low, high = float(x.min()), float(x.max())
        return ((x - low) / (high - low) if high > low else np.zeros_like(x)).astype(np.float32)
    if "A" in img.getbands() or "transparency" in img.info:
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        color = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float32) / 255.0
        if alpha.min() < 1.0 and alpha.sum() > 0:
            ink = float((color * alpha).sum() / alpha.sum())
            paper = 1.0 if ink < 0.5 else 0.0
            return color * alpha + paper * (1.0 - alpha)
        return color
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def mnist_style(gray: np.ndarray) -> np.ndarray:
    """float [H, W] in [0, 1] -> float [28, 28] in [0, 1], white digit on black, MNIST-framed."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 0.5:  # light background: dark ink on paper
        gray = 1.0 - gray
        border = 1.0 - border
    background = float(np.median(border))
    ink = float(np.percentile(gray, 99.5))
    if ink - background < 0.15:
        raise PredictError("no digit found (the image is blank or has too little contrast)")
    x = np.clip((gray - background) / (ink - background), 0.0, 1.0)
    ys, xs = np.nonzero(x > 0.25)
    if len(ys) == 0:
        raise PredictError("no digit found")
    x = x[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = x.shape
    scale = 20.0 / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = Image.fromarray((x * 255).astype(np.uint8)).resize((nw, nh), Image.Resampling.LANCZOS)
    x = np.asarray(small, dtype=np.float32) / 255.0
    total = x.sum()
    cy, cx = ((np.arange(nh)[:, None] * x).sum() / total, (np.arange(nw)[None, :] * x).sum() / total)
    top = int(np.clip(round(14 - cy - 0.5), 0, 28 - nh))
    left = int(np.clip(round(14 - cx - 0.5), 0, 28 - nw))
    out = np.zeros((28, 28), dtype=np.float32)
    out[top : top + nh, left : left + nw] = x
    return out


@dataclass
class Prediction:
    path: str
    digit: int
    probabilities: list[float]
    seen: np.ndarray  # the 28x28 image the model saw

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "digit": self.digit,
            "probabilities": [round(p, 6) for p in self.probabilities],
        }


@torch.inference_mode()
def predict_arrays(model: nn.Module, images: list[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images))[:, None]
    return torch.softmax(WithNormalization(model).eval()(x), dim=1)


def predict_files(model: nn.Module, paths: list[Path]) -> tuple[list[Prediction], list[str]]:
    """Predicts what it can; returns (predictions, one-line problems)."""
    seen, good, problems = [], [], []
    for p in paths:
        try:
            seen.append(mnist_style(to_gray(open_image(p))))
            good.append(p)
        except PredictError as e:
            msg = str(e)
            problems.append(msg if msg.startswith(str(p)) else f"{p}: {msg}")
    if not good:
        return [], problems
    probs = predict_arrays(model, seen)
    preds = []
    for p, pr, s in zip(good, probs, seen, strict=True):
        if not torch.isfinite(pr).all():  # a broken model: no digit, and no NaN in the JSON
            problems.append(f"{p}: {NON_FINITE}")
        else:
            preds.append(Prediction(str(p), int(pr.argmax()), pr.tolist(), s))
    return preds, problems


def expand(inputs: list[Path]) -> tuple[list[Path], list[str]]:
    """Files as given; folders -> their image files (others reported, not failed)."""
    files, notes = [], []
    for p in inputs:
        if p.is_dir():
            for child in sorted(p.iterdir()):
                if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(child)
                elif child.is_file():
                    notes.append(f"{child}: skipped, not an image file")
                elif child.is_dir():
                    notes.append(f"{child}: skipped, a folder (name it to predict its images)")
        else:
            files.append(p)
    return files, notes


def writable_folder(folder: Path) -> Path:
    """`folder`, created if need be, or one PredictError line: checked before any work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise PredictError(f"{folder}: cannot write there ({e.strerror or e})") from None
    return folder


def save_seen(pred: Prediction, folder: Path, taken: set[str]) -> Path:
    """Whole or not at all: written aside, then renamed into place. `taken`: the names this
    command wrote already (two inputs a/7.png and b/7.png keep both: 7-seen.png, 7-seen-2.png)."""
    stem, n = f"{Path(pred.path).stem}-seen", 1
    while (name := f"{stem}.png" if n == 1 else f"{stem}-{n}.png") in taken:
        n += 1
    taken.add(name)
    out = folder / name
    image = Image.fromarray((pred.seen * 255).astype(np.uint8)).resize((112, 112), Image.Resampling.NEAREST)
    try:
        write_atomic(out, lambda tmp: image.save(tmp, format="PNG"), hidden=True)
    except OSError as e:
        raise PredictError(f"{out}: cannot write ({e.strerror or e})") from None
    return out
