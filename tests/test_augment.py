from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from mnist_ladder.engine.augment import (
    SEED_AUGMENT,
    Augment,
    apply,
    augment,
    inverse_affine,
    sample_params,
    sampling_grid,
)


def digits(mnist, n: int = 64) -> torch.Tensor:
    return mnist.train_images[:n].unsqueeze(1).float() / 255


def test_two_images_in_one_batch_get_different_transforms(mnist) -> None:
    one = digits(mnist, 1)
    batch = one.repeat(16, 1, 1, 1)  # the same digit 16 times
    out = augment(batch, SEED_AUGMENT, torch.Generator().manual_seed(0))
    diffs = [(out[0] - out[i]).abs().sum().item() for i in range(1, 16)]
    assert min(diffs) > 1.0


def test_zero_strength_is_the_identity(mnist) -> None:
    x = digits(mnist)
    assert torch.equal(augment(x, Augment(), torch.Generator()), x)
    assert torch.equal(augment(x, SEED_AUGMENT.scaled(0.0), torch.Generator()), x)


def test_identity_parameters_through_the_sampler_change_nothing(mnist) -> None:
    x = digits(mnist)
    n = len(x)
    p = {
        "angle": torch.zeros(n),
        "shear": torch.zeros(n),
        "scale": torch.ones(n),
        "tx": torch.zeros(n),
        "ty": torch.zeros(n),
        "brightness": torch.ones(n),
        "contrast": torch.ones(n),
        "brightness_first": torch.ones(n, dtype=torch.bool),
    }
    assert torch.allclose(apply(x, SEED_AUGMENT, p), x, atol=1e-5)


def test_grid_equals_affine_grid() -> None:
    p = sample_params(SEED_AUGMENT, 32, torch.Generator().manual_seed(1))
    theta = inverse_affine(p)
    ours = sampling_grid(theta, 28, 28)
    ref = F.affine_grid(theta, [32, 1, 28, 28], align_corners=False)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_parameters_stay_within_the_stated_ranges() -> None:
    a = SEED_AUGMENT
    p = sample_params(a, 20_000, torch.Generator().manual_seed(2))
    assert p["angle"].abs().max() <= a.rotation + a.degrees
    assert p["angle"].abs().max() > 0.9 * (a.rotation + a.degrees)  # the range is used
    assert p["shear"].abs().max() <= a.shear
    assert a.scale[0] <= p["scale"].min() and p["scale"].max() <= a.scale[1]
    assert p["tx"].abs().max() <= a.translate and p["ty"].abs().max() <= a.translate
    assert (p["brightness"] - 1).abs().max() <= a.brightness
    assert (p["contrast"] - 1).abs().max() <= a.contrast
    # the inverse map really is the inverse of the drawn geometry: det = 1 / scale^2
    det = torch.linalg.det(inverse_affine(p)[:, :, :2])
    assert torch.allclose(det, 1 / p["scale"] ** 2, rtol=1e-4)


def test_a_pure_rotation_moves_a_point_as_stated() -> None:
    n = 1
    p = {
        "angle": torch.full((n,), 30.0),
        "shear": torch.zeros(n),
        "scale": torch.ones(n),
        "tx": torch.zeros(n),
        "ty": torch.zeros(n),
    }
    inv = inverse_affine(p)[0]
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    assert torch.allclose(inv[:, :2], torch.tensor([[c, s], [-s, c]]), atol=1e-6)


def test_output_stays_a_valid_image_and_labels_are_untouched(mnist) -> None:
    x = digits(mnist, 256)
    out = augment(x, SEED_AUGMENT, torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    # label-preserving: the digit keeps most of its ink (not shifted or scaled off the canvas)
    assert (out.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))).min() > 0.4


def test_elastic_field_is_smooth_bounded_and_moves_ink(mnist) -> None:
    cfg = Augment(elastic=2.0, elastic_grid=4)
    p = sample_params(cfg, 64, torch.Generator().manual_seed(4))
    assert p["field"].abs().max() <= cfg.elastic
    d = augment_displacement_pixels(p["field"])
    # bicubic may overshoot its control points a little, never by much
    assert d.abs().max() <= 1.3 * cfg.elastic and d.abs().max() > 0.5 * cfg.elastic
    # smooth: neighbouring pixels move almost together
    assert (d[:, :, 1:] - d[:, :, :-1]).abs().max() < cfg.elastic / 2
    x = digits(mnist)
    out = apply(x, cfg, {**sample_params(Augment(), 64, torch.Generator()), **p})
    assert (out - x).abs().sum(dim=(1, 2, 3)).min() > 1.0  # every digit changed
    ink = out.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
    # a deformation, not an erasure: local stretching changes ink, on average it is kept
    assert (ink.mean() - 1).abs() < 0.05 and ink.min() > 0.6


def test_elastic_is_drawn_only_when_used() -> None:
    """Adding elastic to the code must not change the random stream of older recipes."""
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert "field" not in sample_params(SEED_AUGMENT, 8, g1)
    sample_params(Augment(elastic=1.0), 8, g2)
    assert not torch.equal(g1.get_state(), g2.get_state())


def augment_displacement_pixels(field: torch.Tensor) -> torch.Tensor:
    from mnist_ladder.engine.augment import displacement

    return displacement(field, 28, 28) * 14  # normalized units -> pixels


def test_resampling_in_parts_gives_the_images_of_one_pass(mnist) -> None:
    # The parts only bound memory: parameters are drawn once, so the result must not depend
    # on the part size (and an epoch's augmentations stay those of earlier versions).
    x = digits(mnist, 100)
    cfg = dataclasses.replace(SEED_AUGMENT, elastic=1.5)
    whole = augment(x, cfg, torch.Generator().manual_seed(3), apply_chunk=1000)
    parts = augment(x, cfg, torch.Generator().manual_seed(3), apply_chunk=7)
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, x)
