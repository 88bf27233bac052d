"""A corrupted MNIST test set in the spirit of MNIST-C (Mu and Gilmer, 2019): the 10,000 test
images (or, for design runs, the 10,000 validation images) under fifteen corruptions, at the
severities MNIST-C published. Where this departs from it, docs/robustness.md says how, one
line each.

Every corruption is a deterministic function of the image, its index and a fixed seed: image
i of corruption c draws from its own generator, seeded with (SEED, c, split, i), so the first
N images are the same whether N or all 10,000 are made. The full set is made once and cached
beside MNIST with its sha256; a missing or damaged cache is rebuilt. It lives in `runs/`, not
in the engine: it evaluates runs and trains nothing, so it is in no run's training identity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import feature, transform, util

from ..core.errors import LadderError
from ..core.files import write_atomic
from ..engine.data import MNIST, default_cache_dir

SEED = 2019  # MNIST-C's year: the seed of every corruption's draws
SUITE = "corrupted"
SPLITS = ("test", "val")  # the test images; the validation protocol's last 10,000 train images
VAL_SIZE = 10_000
VERSION = 1  # of the functions below: a change makes the cache another file


class CorruptedError(LadderError, RuntimeError):
    pass


# ---------------------------------------------------------------- helpers


def _affine(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """x warped by `matrix` (rows, cols) about the image centre (13.5, 13.5), as MNIST-C's
    skimage warps with its translation chosen to keep the centre fixed."""
    centre = np.array([13.5, 13.5])
    t = transform.AffineTransform(
        matrix=np.vstack([np.hstack([matrix, (centre - matrix @ centre)[:, None]]), [0, 0, 1]])
    )
    return transform.warp(x, inverse_map=t, order=1, mode="constant", cval=0.0, preserve_range=True)


def _line(c0: float, r0: float, c1: float, r1: float) -> np.ndarray:
    """MNIST-C's anti-aliased line from (c0, r0) to (c1, r1): intensity log(1 - d / 2.3) + 1
    at distance d from it, between its columns."""
    if c1 == c0:
        return np.zeros((28, 28))
    cc, rr = np.meshgrid(np.arange(28.0), np.arange(28.0), sparse=True)
    slope = (r1 - r0) / (c1 - c0)
    dist = np.clip(np.abs(rr - (slope * (cc - c0) + r0)), 0, 2.3 - 1e-10)
    out = np.clip(np.log(1 - dist / 2.3) + 1, 0, 1)
    out[:, : int(np.floor(min(c0, c1)))] = 0
    out[:, int(np.ceil(max(c0, c1))) :] = 0
    return out


def _plasma(rng: np.random.Generator, size: int = 32, decay: float = 1.4) -> np.ndarray:
    """A diamond-square fractal in [0, 1] (ImageNet-C's and MNIST-C's fog): written here, as no
    installed library makes one."""
    grid = np.zeros((size, size))
    step, wibble = size, 100.0
    grid[0, 0] = 0
    while step >= 2:
        half = step // 2
        corners = grid[0:size:step, 0:size:step]
        mean = (
            corners
            + np.roll(corners, -1, 0)
            + np.roll(corners, -1, 1)
            + np.roll(np.roll(corners, -1, 0), -1, 1)
        ) / 4
        grid[half:size:step, half:size:step] = (
            mean + wibble * rng.uniform(-wibble, wibble, mean.shape) / wibble
        )
        centres = grid[half:size:step, half:size:step]
        up = grid[0:size:step, half:size:step]
        grid[0:size:step, half:size:step] = (
            corners + np.roll(corners, -1, 1) + centres + np.roll(centres, 1, 0)
        ) / 4 + rng.uniform(-wibble, wibble, up.shape)
        left = grid[half:size:step, 0:size:step]
        grid[half:size:step, 0:size:step] = (
            corners + np.roll(corners, -1, 0) + centres + np.roll(centres, 1, 1)
        ) / 4 + rng.uniform(-wibble, wibble, left.shape)
        step, wibble = half, wibble / decay
    grid -= grid.min()
    return grid / grid.max()


# ---------------------------------------------------------------- the corruptions
# Each takes one image as floats in [0, 1] (28x28) and its generator; returns floats in [0, 1].


def shot_noise(x, rng):
    return rng.poisson(x * 3) / 3.0  # severity 5: c = 3


def impulse_noise(x, rng):
    return util.random_noise(x, mode="s&p", amount=0.17, rng=rng)  # severity 4


def glass_blur(x, rng):
    sigma, delta, rounds = 0.7, 1, 2  # severity 1
    x = ndimage.gaussian_filter(x, sigma, mode="nearest")
    x = np.floor(x * 255) / 255  # MNIST-C shuffles the blurred image as uint8
    for _ in range(rounds):
        for h in range(28 - delta, delta, -1):
            for w in range(28 - delta, delta, -1):
                if rng.random() < 0.5:
                    dy, dx = rng.integers(-delta, delta, size=2)
                    x[h, w], x[h + dy, w + dx] = x[h + dy, w + dx], x[h, w]
    return ndimage.gaussian_filter(x, sigma, mode="nearest")


def motion_blur(x, rng):
    radius, sigma = 10, 3.0  # severity 1; ImageMagick's one-sided kernel, drawn here
    angle = np.deg2rad(rng.uniform(-45, 45))
    kernel = np.zeros((2 * radius + 1, 2 * radius + 1))
    for d in range(radius + 1):
        weight = np.exp(-(d**2) / (2 * sigma**2))
        r, c = radius + d * np.sin(angle), radius + d * np.cos(angle)
        r0, c0 = int(np.floor(r)), int(np.floor(c))
        fr, fc = r - r0, c - c0
        for dr, dc, share in (
            (0, 0, (1 - fr) * (1 - fc)),
            (1, 0, fr * (1 - fc)),
            (0, 1, (1 - fr) * fc),
            (1, 1, fr * fc),
        ):
            if 0 <= r0 + dr < kernel.shape[0] and 0 <= c0 + dc < kernel.shape[1]:
                kernel[r0 + dr, c0 + dc] += weight * share
    return ndimage.convolve(x, kernel / kernel.sum(), mode="constant")


def shear(x, rng):
    s = 0.4 * rng.choice([-1, 1])  # severity 2
    return _affine(x, np.array([[1.0, 0.0], [s, 1.0]]))


def scale(x, rng):
    return _affine(x, np.eye(2) / 0.7)  # severity 3: the digit at 0.7 of its size


def rotate(x, rng):
    a = 0.4 * rng.choice([-1, 1])  # severity 2: 0.4 radians, about 23 degrees
    return _affine(x, np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]))


def translate(x, rng):
    dy, dx = 3 * rng.choice([-1, 1], size=2)  # severity 3
    return ndimage.shift(x, (dy, dx), order=0, mode="constant")


def brightness(x, rng):
    return x + 0.5  # severity 5: MNIST-C's HSV value + 0.5, which for grey is this


def stripe(x, rng):
    y = x.copy()
    y[:, :7], y[:, 21:] = 1 - x[:, :7], 1 - x[:, 21:]
    return y


def fog(x, rng):
    strength, decay = 3.0, 1.4  # severity 5
    top = x.max()
    return (x + strength * _plasma(rng, decay=decay)[:28, :28]) * top / (top + strength)


def spatter(x, rng):
    loc, spread, sigma, cut, sigma2 = 0.65, 0.3, 1.0, 0.65, 1.5  # severity 4 (mud)
    liquid = ndimage.gaussian_filter(rng.normal(loc, spread, x.shape), sigma, mode="nearest")
    mask = ndimage.gaussian_filter((liquid > cut).astype(float), sigma2, mode="nearest")
    mask[mask < 0.8] = 0
    return x * (1 - mask) + 63 / 255 * mask


def dotted_line(x, rng):
    r0, r1 = rng.integers(0, 27, size=2)
    line = _line(0, r0, 27, r1)
    for start in range(2, 28, 4):  # every other pair of columns left out
        line[:, start : start + 2] = 0
    return x + line


def zigzag(x, rng):
    a = b = 2.0  # length and width of a zig
    c0, c1 = 2, 25
    r0 = int(rng.integers(0, 27))
    r1 = r0 + int(rng.integers(-5, 5))
    theta = np.arctan((r1 - r0) / (c1 - c0))
    d = (c1 - c0) / np.cos(theta)
    points = [(0.0, 0.0)]
    r_i = 0.0
    for i in range(int((d - a) // (2 * a)) + 1):
        r_i = (-1) ** i * b
        points.append(((2 * i + 1) * a, r_i))
    end = (2 * a) * (d // (2 * a))
    if d != end:
        points.append((d, r_i / (2 * (d - end))))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    cs, rs = rot @ np.array(points).T
    cs, rs = cs + c0, rs + r0
    y = x.copy()
    for i in range(1, len(cs)):
        y = np.clip(y + _line(cs[i - 1], rs[i - 1], cs[i], rs[i]), 0, 1)
    return y


def canny_edges(x, rng):
    return feature.canny(x).astype(float)


CORRUPTIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    f.__name__: f
    for f in (
        shot_noise,
        impulse_noise,
        glass_blur,
        motion_blur,
        shear,
        scale,
        rotate,
        translate,
        brightness,
        stripe,
        fog,
        spatter,
        dotted_line,
        zigzag,
        canny_edges,
    )
}
FAMILIES = {  # for the report's heatmap and the docs
    "noise": ("shot_noise", "impulse_noise"),
    "blur": ("glass_blur", "motion_blur"),
    "affine": ("shear", "scale", "rotate", "translate"),
    "digital": ("brightness", "stripe", "fog", "spatter", "dotted_line", "zigzag", "canny_edges"),
}


def corrupt(name: str, images: np.ndarray, split: str, first: int = 0) -> np.ndarray:
    """Corruption `name` of uint8 images [N, 28, 28], image k being number first + k of
    `split`: uint8 [N, 28, 28], each image from its own generator."""
    fn = CORRUPTIONS[name]
    index = list(CORRUPTIONS).index(name)
    out = np.empty_like(images)
    for k, image in enumerate(images):
        rng = np.random.default_rng([SEED, index, SPLITS.index(split), first + k])
        y = fn(image.astype(np.float64) / 255, rng)
        out[k] = np.round(np.clip(y, 0, 1) * 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------- the suite, cached


def split_images(mnist: MNIST, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split == "test":
        return mnist.test_images.numpy(), mnist.test_labels.numpy()
    return mnist.train_images[-VAL_SIZE:].numpy(), mnist.train_labels[-VAL_SIZE:].numpy()


def cache_path(split: str, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"corrupted-v{VERSION}-{split}.npy"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load(mnist: MNIST, split: str, limit: int | None = None, *, log=print) -> tuple[np.ndarray, np.ndarray]:
    """The corrupted `split`: images uint8 [15, N, 28, 28] (CORRUPTIONS' order) and labels
    [N]. The first `limit` images are made on the spot; the full set is read from its cache,
    checked against its sha256, and made again (about a minute) when missing or damaged."""
    images, labels = split_images(mnist, split)
    if limit is not None and limit < len(images):
        return np.stack([corrupt(n, images[:limit], split) for n in CORRUPTIONS]), labels[:limit]
    path = cache_path(split)
    sums = path.with_suffix(".sha256")
    if path.is_file() and sums.is_file():
        data = path.read_bytes()
        if _digest(data) == sums.read_text().strip():
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (len(CORRUPTIONS), *images.shape):
                return arr, labels
        log(f"[corrupted] {path} is damaged (its checksum or shape differs): making it again")
    log(f"[corrupted] making the {split} set: {len(CORRUPTIONS)} corruptions x {len(images):,} images")
    arr = np.stack([corrupt(n, images, split) for n in CORRUPTIONS])
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    write_atomic(path, buf.getvalue(), make_parent=True)
    write_atomic(sums, _digest(buf.getvalue()) + "\n", make_parent=True)
    return arr, labels


def eval_limit(protocol: str) -> int | None:
    """The images a run was evaluated on, from its protocol ('test:train=2000,eval=500')."""
    for part in protocol.partition(":")[2].split(","):
        key, _, value = part.partition("=")
        if key == "eval" and value != "all":
            return int(value)
    return None


def measure(row, stores, mnist: MNIST, *, log=print) -> dict[str, float] | str:
    """A finished run's accuracy on each corruption of its own held-out split (the test set,
    or the validation images for a validation-protocol run), from its stored weights: the
    scores, or why it was skipped. The caller stores them."""
    import torch

    from ..engine.train import normalize, predict, to_unit
    from .experiment import RunError, load_model, weights_file

    if row.status != "finished":
        return f"skipped: the run is {row.status}"
    try:
        weights = weights_file(row, stores)
    except RunError as e:
        return f"skipped: {e}"
    if weights is None:
        return f"skipped: no weights (no {Path(row.run_dir).name}/model.pt and none in the store)"
    model, _ = load_model(weights)
    images, labels = load(mnist, split_of(row), eval_limit(row.protocol), log=log)
    y = torch.from_numpy(labels).long()
    scores = {}
    for name, corrupted in zip(CORRUPTIONS, images, strict=True):
        logits = predict(model, normalize(to_unit(torch.from_numpy(corrupted))))
        scores[name] = 100.0 * (logits.argmax(1) == y).float().mean().item()
    return scores


def split_of(row) -> str:
    return "val" if row.protocol.startswith("val") else "test"


def mean_accuracy(scores: dict[str, float] | None) -> float | None:
    """The suite's headline: the mean over its corruptions (None: not measured)."""
    return None if not scores else sum(scores.values()) / len(scores)


def fixture_digest(n: int = 8) -> dict[str, str]:
    """sha256 of each corruption of the first `n` test images: pinned by a committed fixture."""
    from ..engine.data import load as load_mnist

    images, _ = split_images(load_mnist(), "test")
    return {name: _digest(corrupt(name, images[:n], "test").tobytes()) for name in CORRUPTIONS}
