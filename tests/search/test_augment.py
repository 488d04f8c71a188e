from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from search.augment import (
    Normalization,
    augment_batch,
    cutout,
    mix,
    random_crop,
    random_flip,
    smooth_one_hot,
)
from space.genotype import Augment


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_random_crop_is_a_window_of_the_padded_image() -> None:
    x = torch.randint(1, 255, (32, 3, 8, 10), dtype=torch.uint8)
    out = random_crop(x, 2, gen())
    padded = F.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 10])
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 8  # offsets are drawn per image
    assert random_crop(x, 0, gen()) is x


def test_random_flip_mirrors_about_half() -> None:
    x = torch.randn(400, 3, 4, 4)
    out = random_flip(x, gen())
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert bool((flipped | kept).all())
    assert 150 < int(flipped.sum()) < 250


def test_cutout_zeroes_one_clipped_square_per_image() -> None:
    x = torch.ones(200, 3, 12, 12)
    out = cutout(x, 5, gen())
    for image in out:
        zero = image[0] == 0
        assert torch.equal(zero, (image == 0).all(0))  # same square in every channel
        rows, cols = torch.nonzero(zero, as_tuple=True)
        h = int(rows.max() - rows.min() + 1)
        w = int(cols.max() - cols.min() + 1)
        assert 1 <= h <= 5 and 1 <= w <= 5
        assert int(zero.sum()) == h * w  # a filled rectangle
    full = [int((image[0] == 0).sum()) for image in out]
    assert max(full) == 25 and min(full) < 25  # whole squares inside, clipped ones at borders


def test_smooth_one_hot_is_the_rule_of_cross_entropy() -> None:
    logits = torch.randn(16, 7)
    labels = torch.randint(0, 7, (16,))
    for smoothing in (0.0, 0.1, 0.3):
        targets = smooth_one_hot(labels, 7, smoothing)
        assert torch.allclose(targets.sum(1), torch.ones(16))
        assert torch.allclose(
            F.cross_entropy(logits, targets),
            F.cross_entropy(logits, labels, label_smoothing=smoothing),
        )


def _distinct_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Image i is constant i + 1, label i: every pixel and target says where it came from.
    x = torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 8, 8).clone()
    return x, torch.arange(n)


def test_mixup_targets_are_the_mixing_weights() -> None:
    x, y = _distinct_batch(12)
    aug = Augment(mixup_alpha=0.4)
    rng = np.random.default_rng(0)
    mixed, targets = mix(x, y, aug, 12, rng, gen())
    assert torch.allclose(targets.sum(1), torch.ones(12))
    for i in range(12):
        nonzero = torch.nonzero(targets[i]).flatten().tolist()
        lam_i = targets[i, i].item()
        partner = next((j for j in nonzero if j != i), i)
        expected = lam_i * (i + 1) + (1 - lam_i) * (partner + 1) if partner != i else i + 1
        assert torch.allclose(mixed[i], torch.full_like(mixed[i], expected), atol=1e-5)


def test_cutmix_targets_are_the_pixel_shares() -> None:
    x, y = _distinct_batch(10)
    aug = Augment(cutmix_alpha=1.0)
    for seed in range(5):
        mixed, targets = mix(x, y, aug, 10, np.random.default_rng(seed), gen(seed))
        assert torch.allclose(targets.sum(1), torch.ones(10))
        for i in range(10):
            own = (mixed[i] == i + 1).float().mean().item()
            if own < 1.0:  # the box came from another image
                assert targets[i, i].item() == pytest.approx(own, abs=1e-6)


def test_mix_with_smoothing_keeps_smoothing_and_sums_to_one() -> None:
    x, y = _distinct_batch(8)
    aug = Augment(mixup_alpha=1.0, cutmix_alpha=1.0, label_smoothing=0.1)
    _, targets = mix(x, y, aug, 8, np.random.default_rng(1), gen())
    assert torch.allclose(targets.sum(1), torch.ones(8))
    assert targets.min() >= 0.1 / 8 - 1e-7


def test_no_mixing_passes_the_batch_through() -> None:
    x, y = _distinct_batch(4)
    mixed, targets = mix(x, y, Augment(), 4, np.random.default_rng(0), gen())
    assert mixed is x
    assert torch.equal(targets, F.one_hot(y, 4).float())


@pytest.mark.parametrize("auto", ["none", "randaugment", "trivialaugment"])
def test_augment_batch_normalises_and_keeps_shape(auto: str) -> None:
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    norm = Normalization(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    aug = Augment(crop_padding=2, cutout=4, auto=auto)
    a = augment_batch(images, aug, norm, gen(5))
    b = augment_batch(images, aug, norm, gen(5))
    assert a.shape == (64, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b)  # one generator drives every random choice
    plain = augment_batch(images, Augment(crop_padding=0, flip=False), norm, gen())
    expected = (images.float() / 255 - torch.tensor(norm.mean).view(1, 3, 1, 1)) / torch.tensor(
        norm.std
    ).view(1, 3, 1, 1)
    assert torch.allclose(plain, expected, atol=1e-6)
