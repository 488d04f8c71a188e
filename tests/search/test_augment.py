from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from search.augment import (
    Normalization,
    augment_batch,
    augmented_batches,
    beta,
    cutmix_box,
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
    mixed, targets = mix(x, y, aug, 12, gen())
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
        mixed, targets = mix(x, y, aug, 10, gen(seed))
        assert torch.allclose(targets.sum(1), torch.ones(10))
        for i in range(10):
            own = (mixed[i] == i + 1).float().mean().item()
            if own < 1.0:  # the box came from another image
                assert targets[i, i].item() == pytest.approx(own, abs=1e-6)


def test_mix_with_smoothing_keeps_smoothing_and_sums_to_one() -> None:
    x, y = _distinct_batch(8)
    aug = Augment(mixup_alpha=1.0, cutmix_alpha=1.0, label_smoothing=0.1)
    _, targets = mix(x, y, aug, 8, gen())
    assert torch.allclose(targets.sum(1), torch.ones(8))
    assert targets.min() >= 0.1 / 8 - 1e-7


def test_no_mixing_passes_the_batch_through() -> None:
    x, y = _distinct_batch(4)
    mixed, targets = mix(x, y, Augment(), 4, gen())
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


def test_beta_draws_follow_the_beta_distribution() -> None:
    g = gen(3)
    for alpha in (0.2, 1.0):
        draws = torch.stack([beta(alpha, g, torch.device("cpu")) for _ in range(4000)])
        reference = torch.distributions.Beta(alpha, alpha).sample((200_000,))
        assert draws.min() >= 0 and draws.max() <= 1
        # Mean 1/2, variance 1 / (4 (2 alpha + 1)); quartiles as the reference's.
        assert draws.mean().item() == pytest.approx(0.5, abs=0.02)
        assert draws.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.08)
        q = torch.tensor([0.25, 0.75])
        assert torch.allclose(draws.quantile(q), reference.quantile(q), atol=0.03)


def test_cutmix_box_covers_one_minus_lambda_and_says_what_it_kept() -> None:
    g = gen(4)
    for lam in (0.1, 0.5, 0.9):
        areas = []
        for _ in range(300):
            mask, kept = cutmix_box(16, 16, torch.tensor(lam), g)
            rows, cols = torch.nonzero(mask[0, 0], as_tuple=True)
            assert mask.shape == (1, 1, 16, 16)
            if len(rows):  # one filled rectangle, its side round(16 * sqrt(1 - lam)) or clipped
                h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
                assert int(mask.sum()) == h * w
                assert h <= round(16 * (1 - lam) ** 0.5) and w <= round(16 * (1 - lam) ** 0.5)
            assert kept.item() == pytest.approx(1 - int(mask.sum()) / 256)
            areas.append(int(mask.sum()) / 256)
        full = round(16 * (1 - lam) ** 0.5) ** 2 / 256
        assert max(areas) == pytest.approx(full)  # unclipped boxes have the full side
        centred = torch.tensor(areas)
        assert (centred < full).any()  # and some are clipped by the border


def test_mixup_and_cutmix_both_happen_about_half_the_time() -> None:
    x, y = _distinct_batch(6)
    aug = Augment(mixup_alpha=1.0, cutmix_alpha=1.0)
    g = gen(2)
    kinds = []
    for _ in range(400):
        mixed, _ = mix(x, y, aug, 6, g)
        # cutmix: every pixel is one of the images (integers here); mixup: a blend everywhere
        whole = bool((mixed == mixed.round()).all())
        kinds.append("cutmix" if whole else "mixup")
    assert 150 < kinds.count("cutmix") < 250


def test_augmented_batches_cover_the_epoch_in_order_whatever_the_chunk() -> None:
    images = torch.arange(103, dtype=torch.uint8).view(103, 1, 1, 1).expand(103, 3, 4, 4).clone()
    labels = torch.arange(103)
    order = torch.randperm(103, generator=gen(1))
    plain = Augment(crop_padding=0, flip=False)
    norm = Normalization(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))
    for chunk in (10, 25, 1000):
        out = list(
            augmented_batches(
                images, labels, order, batch_size=10, augment=plain, normalization=norm,
                generator=gen(), chunk_images=chunk,
            )
        )  # fmt: skip
        assert [len(y) for _, y in out] == [10] * 10  # the partial last batch is dropped
        seen = torch.cat([y for _, y in out])
        assert torch.equal(seen, order[:100])
        for x, y in out:  # each image stays with its label
            assert torch.equal(x[:, 0, 0, 0].round().long(), y)
    short = list(
        augmented_batches(
            images[:7], labels[:7], torch.arange(7), batch_size=10, augment=plain,
            normalization=norm, generator=gen(),
        )
    )  # fmt: skip
    assert [len(y) for _, y in short] == [7]


def test_chunking_keeps_the_distribution_of_each_image() -> None:
    # Crop offsets of image 0 over many epochs: uniform over the 5 x 5 windows either way.
    images = torch.zeros(20, 1, 6, 6, dtype=torch.uint8)
    images[:, :, 2:4, 2:4] = 200  # a bright square whose position tells the crop offset
    norm = Normalization(mean=(0.0,), std=(1.0,))
    for chunk in (4, 20):
        g = gen(7)
        positions = []
        for _ in range(400):
            for x, _ in augmented_batches(
                images, torch.arange(20), torch.arange(20), batch_size=4,
                augment=Augment(crop_padding=2, flip=False), normalization=norm, generator=g,
                chunk_images=chunk,
            ):  # fmt: skip
                bright = torch.nonzero(x[0, 0] > 0.5)
                positions.append(tuple(bright.min(0).values.tolist()))
                break
        counts = torch.tensor([positions.count(p) for p in set(positions)], dtype=torch.float)
        assert len(counts) == 25 and counts.min() > 4 and counts.max() < 35
