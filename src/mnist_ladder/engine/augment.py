"""Batched augmentation: one random transform per image, a whole batch at a time, on the
device that trains. Replaces the seed's per-image PIL pipeline

    RandomRotation(6) -> RandomAffine(7, translate=0.1, scale=(0.8, 1.2), shear=10)
    -> ColorJitter(brightness=0.4, contrast=0.4)

The two geometric transforms are composed into one affine map per image, so each image is
resampled once (bilinear) instead of twice; translations are sub-pixel rather than
torchvision's whole pixels. The sampling grid is built directly: `F.affine_grid` is several
times slower on the CPU for these small images.

Beyond the seed: an elastic distortion (Simard et al., 2003, the classic MNIST augmentation
for handwriting's local wobble) adds a smooth random displacement field to the same grid, so
it costs one interpolation of a few control points and no extra resampling. The field is
bicubic between control points rather than Gaussian-smoothed noise: the same smooth
deformation, without a convolution over every image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    rotation: float = 0.0  # degrees, +-: the seed's RandomRotation
    degrees: float = 0.0  # degrees, +-: RandomAffine's rotation
    shear: float = 0.0  # degrees, +-, along x
    translate: float = 0.0  # fraction of the image size, +-, each axis
    scale: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0  # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.0  # factor drawn from [1 - c, 1 + c]
    elastic: float = 0.0  # pixels: largest displacement of the random field, each axis
    elastic_grid: int = 4  # control points per side of the field: fewer = smoother

    def __post_init__(self) -> None:
        if self.elastic < 0 or self.elastic_grid < 2:
            raise ValueError(
                f"elastic must be >= 0 and elastic_grid >= 2, got {self.elastic} and {self.elastic_grid}"
            )

    @property
    def geometric(self) -> bool:
        return bool(
            self.rotation
            or self.degrees
            or self.shear
            or self.translate
            or self.scale != (1.0, 1.0)
            or self.elastic
        )

    @property
    def photometric(self) -> bool:
        return bool(self.brightness or self.contrast)

    def scaled(self, strength: float) -> Augment:
        """The same augmentation at a fraction of its strength (used by the search)."""
        lo, hi = self.scale
        return Augment(
            self.rotation * strength,
            self.degrees * strength,
            self.shear * strength,
            self.translate * strength,
            (1 - (1 - lo) * strength, 1 + (hi - 1) * strength),
            self.brightness * strength,
            self.contrast * strength,
            self.elastic * strength,
            self.elastic_grid,
        )


SEED_AUGMENT = Augment(
    rotation=6, degrees=7, shear=10, translate=0.1, scale=(0.8, 1.2), brightness=0.4, contrast=0.4
)


def sample_params(
    cfg: Augment, n: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Per-image random parameters, each a tensor [n]."""

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device) * (hi - lo) + lo

    p = {
        "angle": uniform(-cfg.rotation, cfg.rotation) + uniform(-cfg.degrees, cfg.degrees),
        "shear": uniform(-cfg.shear, cfg.shear),
        "scale": uniform(*cfg.scale),
        "tx": uniform(-cfg.translate, cfg.translate),
        "ty": uniform(-cfg.translate, cfg.translate),
        "brightness": uniform(1 - cfg.brightness, 1 + cfg.brightness),
        "contrast": uniform(1 - cfg.contrast, 1 + cfg.contrast),
        "brightness_first": torch.rand(n, generator=generator, device=device) < 0.5,
    }
    if cfg.elastic:  # drawn only when used: configurations without it keep their random stream
        g = cfg.elastic_grid
        p["field"] = (torch.rand(n, 2, g, g, generator=generator, device=device) * 2 - 1) * cfg.elastic
    return p


def inverse_affine(p: dict[str, torch.Tensor]) -> torch.Tensor:
    """[n, 2, 3] maps from output to input coordinates (normalized, centred, y down).

    Forward map: x -> scale * R(angle) @ Shear(shear) @ x + t; sampling needs its inverse.
    """
    a, sh = torch.deg2rad(p["angle"]), torch.deg2rad(p["shear"])
    cos, sin, tan = torch.cos(a), torch.sin(a), torch.tan(sh)
    # M = s * [[cos, cos*tan - sin], [sin, sin*tan + cos]]  (R @ [[1, tan], [0, 1]])
    s = p["scale"]
    m00, m01 = s * cos, s * (cos * tan - sin)
    m10, m11 = s * sin, s * (sin * tan + cos)
    det = m00 * m11 - m01 * m10
    i00, i01, i10, i11 = m11 / det, -m01 / det, -m10 / det, m00 / det
    tx, ty = 2 * p["tx"], 2 * p["ty"]  # fraction of the size -> normalized units ([-1, 1])
    b0 = -(i00 * tx + i01 * ty)
    b1 = -(i10 * tx + i11 * ty)
    return torch.stack([torch.stack([i00, i01, b0], -1), torch.stack([i10, i11, b1], -1)], -2)


def sampling_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`F.affine_grid(theta, ..., align_corners=False)` built with broadcasting."""
    dev, dt = theta.device, theta.dtype
    xs = (torch.arange(width, device=dev, dtype=dt) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=dev, dtype=dt) * 2 + 1) / height - 1
    t = theta[:, :, :, None, None]  # [n, 2, 3, 1, 1]
    grid = t[:, :, 0] * xs + t[:, :, 1] * ys[:, None] + t[:, :, 2]  # [n, 2, H, W]
    return grid.permute(0, 2, 3, 1)


def displacement(field: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Control-point displacements [n, 2, g, g] in pixels -> a smooth [n, H, W, 2] offset in
    the sampler's normalized units."""
    d = F.interpolate(field, size=(height, width), mode="bicubic", align_corners=True)
    d = d * torch.tensor([2 / width, 2 / height], device=d.device, dtype=d.dtype)[:, None, None]
    return d.permute(0, 2, 3, 1)


def apply(x: torch.Tensor, cfg: Augment, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """x: [n, 1, H, W] in [0, 1] -> augmented, same shape and range."""
    if cfg.geometric:
        grid = sampling_grid(inverse_affine(p), x.shape[-2], x.shape[-1])
        if "field" in p:
            grid = grid + displacement(p["field"].to(grid.dtype), x.shape[-2], x.shape[-1])
        grid = grid.to(x.dtype)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.photometric:
        b = p["brightness"].to(x.dtype)[:, None, None, None]
        c = p["contrast"].to(x.dtype)[:, None, None, None]
        first = p["brightness_first"][:, None, None, None]

        def brightness(t: torch.Tensor) -> torch.Tensor:
            return (t * b).clamp_(0, 1)

        def contrast(t: torch.Tensor) -> torch.Tensor:
            mean = t.mean(dim=(1, 2, 3), keepdim=True)
            return (t * c + mean * (1 - c)).clamp_(0, 1)

        # ColorJitter applies its adjustments in a random order, per image.
        x = torch.where(first, brightness(x), contrast(x))
        x = torch.where(first, contrast(x), brightness(x))
    return x


def draw(
    cfg: Augment, n: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor] | None:
    """Every image's parameters for `cfg` at once (so the random stream depends only on n),
    or None, and nothing drawn, when `cfg` changes nothing. Both ways of augmenting (`augment`
    here, `fused.augment_images` on the CPU) draw through this."""
    return sample_params(cfg, n, generator, device) if cfg.geometric or cfg.photometric else None


def augment(
    x: torch.Tensor, cfg: Augment, generator: torch.Generator, apply_chunk: int = 2048
) -> torch.Tensor:
    """Draws every image's parameters at once, then resamples `apply_chunk` images at a time:
    the grid and its temporaries are several copies of the images, and at 8,192 images they
    were a fifth of a Step 6 run's peak memory."""
    p = draw(cfg, x.shape[0], generator, x.device)
    if p is None:
        return x
    out = torch.empty_like(x)
    for i in range(0, x.shape[0], apply_chunk):
        part = slice(i, i + apply_chunk)
        out[part] = apply(x[part], cfg, {k: v[part] for k, v in p.items()})
    return out
