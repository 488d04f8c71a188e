"""Training augmentation for many images at once, on the images' device, with no host decision.

``augmented_batches`` is the loader: it walks one shuffled epoch of the device-resident uint8
split in chunks of several batches, and ``augment_batch`` pads and crops at a random offset,
flips, applies RandAugment/TrivialAugment, normalises and cuts out a square for a whole chunk in
one go (no per-image Python loop, and each kernel launched once per chunk rather than per batch).
``mix`` then applies mixup or cutmix to each batch and builds the soft targets (with label
smoothing).

All randomness comes from one ``torch.Generator`` on the device, the mixup/cutmix branch, box and
mixing weight included: no step waits on the GPU, and nothing in a step depends on a value read
back to the host.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from search.autoaugment import rand_augment, trivial_augment
from space.genotype import Augment


@dataclass(frozen=True)
class Normalization:
    """Per-channel statistics of the training images, in [0, 1] units."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) floats in [0, 1] -> zero mean, unit variance per channel."""
        mean = _channel_constant(self.mean, x.device, x.dtype)
        std = _channel_constant(self.std, x.device, x.dtype)
        return (x - mean) / std


@functools.lru_cache(maxsize=64)
def _channel_constant(
    values: tuple[float, ...], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """(1, C, 1, 1) tensor of ``values``, made once per device: building it from Python floats
    on every step would copy from the host, and on CUDA that copy waits for the GPU."""
    return torch.tensor(values, device=device, dtype=dtype).view(1, -1, 1, 1)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` pixels and crop back to the original size at a random offset
    per image: one gather for the batch. (N, C, H, W) -> (N, C, H, W), any dtype."""
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=x.device)
    rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1)  # (N, 1, H, 1)
    cols = (dx + torch.arange(w, device=x.device)).view(n, 1, 1, w)  # (N, 1, 1, W)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chan = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chan, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one ``size`` x ``size`` square per image, centred anywhere in the image (so it may
    be clipped by the border, as in DeVries & Taylor 2017)."""
    if size == 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), generator=generator, device=x.device)
    cx = torch.randint(0, w, (n, 1, 1), generator=generator, device=x.device)
    top, left = cy - size // 2, cx - size // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return x.masked_fill(inside.unsqueeze(1), 0)


def augment_batch(
    images: torch.Tensor,
    augment: Augment,
    normalization: Normalization,
    generator: torch.Generator,
) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalised float32 (N, C, H, W), augmented as ``augment`` says.

    Order as in the usual torchvision pipelines: crop, flip, auto-augment, then cutout on the
    normalised image (so the square is the dataset mean, i.e. zero).
    """
    x = random_crop(images, augment.crop_padding, generator)
    if augment.flip:
        x = random_flip(x, generator)
    x = x.float().div_(255)
    if augment.auto == "randaugment":
        x = rand_augment(x, magnitude=augment.auto_magnitude, generator=generator)
    elif augment.auto == "trivialaugment":
        x = trivial_augment(x, generator=generator)
    x = normalization.apply(x)
    return cutout(x, augment.cutout, generator)


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """(N,) class indices -> (N, classes) targets: 1 - smoothing + smoothing/classes on the
    label, smoothing/classes elsewhere (the rule of ``F.cross_entropy(label_smoothing=...)``)."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def beta(alpha: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """One draw of Beta(alpha, alpha) as a 0-dim float32 tensor on ``device``: G1 / (G1 + G2) of
    two Gamma(alpha) draws, so it comes from ``generator`` and never leaves the device."""
    gammas = torch._standard_gamma(torch.full((2,), alpha, device=device), generator=generator)
    return gammas[0] / gammas.sum()


def cutmix_box(
    h: int, w: int, lam: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, kept): a (1, 1, h, w) bool mask of a box covering about 1 - ``lam`` of the image,
    centred uniformly at random and clipped by the border (Yun et al. 2019), and the share of
    the image outside it. ``lam`` is a 0-dim tensor; everything stays on its device."""
    device = lam.device
    side = torch.sqrt(1.0 - lam)
    bh, bw = torch.round(h * side), torch.round(w * side)  # round half to even, as Python's
    cy = torch.randint(0, h, (), generator=generator, device=device)
    cx = torch.randint(0, w, (), generator=generator, device=device)
    top, left = (
        cy - torch.div(bh, 2, rounding_mode="floor"),
        cx - torch.div(bw, 2, rounding_mode="floor"),
    )
    rows = torch.arange(h, device=device).view(1, 1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, 1, w)
    mask = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
    kept = 1.0 - mask.sum(dtype=torch.float32) / (h * w)  # the border may clip the box
    return mask, kept


def mix(
    x: torch.Tensor,
    labels: torch.Tensor,
    augment: Augment,
    num_classes: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, soft targets): mixup or cutmix of the batch with a shuffled copy of itself.

    One mixing weight per batch, drawn from Beta(alpha, alpha). With both alphas set, each batch
    uses one of the two with probability 1/2 (timm's switch): both are computed and one is
    kept with ``torch.where``, so the choice is never read on the host. The targets mix the two
    images' smoothed one-hot labels in the proportion of what each contributes to the mixed
    image, so they always sum to 1. Without mixing, the batch passes through with smoothed
    targets.
    """
    targets = smooth_one_hot(labels, num_classes, augment.label_smoothing)
    use_mixup = augment.mixup_alpha > 0
    use_cutmix = augment.cutmix_alpha > 0
    if not (use_mixup or use_cutmix):
        return x, targets
    device = x.device
    perm = torch.randperm(x.shape[0], generator=generator, device=device)
    partner = x[perm]
    if use_mixup:
        lam_mixup = beta(augment.mixup_alpha, generator, device)
        mixed = torch.lerp(partner, x, lam_mixup.to(x.dtype))  # lam * x + (1 - lam) * partner
        lam = lam_mixup
    if use_cutmix:
        mask, kept = cutmix_box(
            *x.shape[2:], beta(augment.cutmix_alpha, generator, device), generator
        )
        cut = torch.where(mask, partner, x)
        if use_mixup:
            take_mixup = torch.rand((), generator=generator, device=device) < 0.5
            mixed = torch.where(take_mixup, mixed, cut)
            lam = torch.where(take_mixup, lam_mixup, kept)
        else:
            mixed, lam = cut, kept
    return mixed, torch.lerp(targets[perm], targets, lam)


# Images augmented together by ``augmented_batches``: a chunk of several batches launches every
# augmentation kernel once (on a GPU, small networks are bound by kernel launches), while its
# float32 copy stays small: 4,096 CIFAR images (50 MB), fewer of larger images.
CHUNK_IMAGES = 4096
CHUNK_BYTES = CHUNK_IMAGES * 3 * 32 * 32 * 4


def batches_per_chunk(
    images: torch.Tensor, batch_size: int, chunk_images: int = CHUNK_IMAGES
) -> int:
    """How many batches of ``images`` (N, C, H, W) ``augmented_batches`` augments at once."""
    image_bytes = 4 * images[0].numel()
    return max(1, min(chunk_images, CHUNK_BYTES // image_bytes) // batch_size)


def augmented_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    order: torch.Tensor,
    *,
    batch_size: int,
    augment: Augment,
    normalization: Normalization,
    generator: torch.Generator,
    chunk_images: int = CHUNK_IMAGES,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(normalised float images, labels) of every full batch of the epoch ``order`` (an index
    tensor over ``images``, uint8 (N, C, H, W), on their device); the last partial batch is
    dropped, and an epoch shorter than one batch is one smaller batch. Each chunk of about
    ``chunk_images`` images (fewer of images larger than CIFAR's: a chunk's float32 copy stays
    near ``CHUNK_BYTES``) is augmented at once; every image is augmented independently, so the
    chunk size changes nothing but speed."""
    steps = max(1, order.shape[0] // batch_size)
    per_chunk = batches_per_chunk(images, batch_size, chunk_images)
    for first in range(0, steps, per_chunk):
        count = min(per_chunk, steps - first)
        index = order[first * batch_size : (first + count) * batch_size]
        x = augment_batch(images[index], augment, normalization, generator)
        y = labels[index]
        for j in range(count):
            yield x[j * batch_size : (j + 1) * batch_size], y[j * batch_size : (j + 1) * batch_size]
