"""Training augmentation for a whole batch at once, on the batch's device.

The loader gathers a batch of uint8 images from the device-resident split; ``augment_batch`` pads
and crops at a random offset, flips, applies RandAugment/TrivialAugment, cuts out a square and
normalises, for every image in one go: no per-image Python loop and no host round trip.
``mix`` then applies mixup or cutmix and builds the soft targets (with label smoothing).

All randomness of the images comes from one ``torch.Generator`` on the device; the per-batch
scalars of mixup/cutmix (the mixing weight, the switch between the two) come from a NumPy
generator on the host, so no step waits on the GPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
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


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box covering about 1 - ``lam`` of an h x w image, centred
    uniformly at random and clipped by the border (Yun et al. 2019)."""
    side = np.sqrt(1.0 - lam)
    bh, bw = round(h * side), round(w * side)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    top, bottom = max(cy - bh // 2, 0), min(cy - bh // 2 + bh, h)
    left, right = max(cx - bw // 2, 0), min(cx - bw // 2 + bw, w)
    return top, bottom, left, right


def mix(
    x: torch.Tensor,
    labels: torch.Tensor,
    augment: Augment,
    num_classes: int,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, soft targets): mixup or cutmix of the batch with a shuffled copy of itself.

    One mixing weight per batch, drawn from Beta(alpha, alpha). With both alphas set, each batch
    uses one of the two with probability 1/2 (timm's switch). The targets mix the two images'
    smoothed one-hot labels in the proportion of what each contributes to the mixed image, so
    they always sum to 1. Without mixing, the batch passes through with smoothed targets.
    """
    targets = smooth_one_hot(labels, num_classes, augment.label_smoothing)
    use_mixup = augment.mixup_alpha > 0
    use_cutmix = augment.cutmix_alpha > 0
    if use_mixup and use_cutmix:
        use_mixup = bool(rng.random() < 0.5)
        use_cutmix = not use_mixup
    if not (use_mixup or use_cutmix):
        return x, targets
    alpha = augment.mixup_alpha if use_mixup else augment.cutmix_alpha
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=generator, device=x.device)
    if use_mixup:
        x = lam * x + (1.0 - lam) * x[perm]
    else:
        h, w = x.shape[2:]
        top, bottom, left, right = cutmix_box(h, w, lam, rng)
        x = x.clone()
        x[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (h * w)  # the share actually kept
    return x, lam * targets + (1.0 - lam) * targets[perm]
