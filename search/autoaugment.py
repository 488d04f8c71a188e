"""RandAugment and TrivialAugment-Wide for a whole batch at once, on the batch's device.

torchvision's ``RandAugment`` / ``TrivialAugmentWide`` draw one op per call, from the global RNG,
read on the host; a batch passed to them gets the same op for every image. Here every image draws
its own op, magnitude bin and sign from one ``torch.Generator``, and pays only for the op it drew:

- The batch is dealt into 14 groups of m = ceil(B / 14) slots, one group per op. A random
  permutation of the 14 m slots (``randperm`` on the device) names the image in each slot, or
  marks it as padding (a value >= B). One ``index_select`` gathers the slots, each op transforms
  its m slots as one sub-batch, one ``cat`` joins the results in slot order and one more
  ``index_select`` (at the inverse permutation) puts every image back in its row; padding slots
  hold a copy of some image, are computed and dropped. An image's slot is uniform over all 14 m,
  so its op is uniform over the 14 ops, as in torchvision. Identity costs nothing, and the 5
  geometric ops share one ``affine_grid`` + ``grid_sample`` over their 5 m adjacent slots.
- Each slot draws a column of its op's row in a parameter table: 2 * bin + (1 for a negative
  sign), uniform over the 62 columns for TrivialAugment and over the 2 columns of the fixed bin
  for RandAugment. The table holds what the op's kernel needs, derived from the signed magnitude
  (the affine matrix, 1 - factor, 2**bits, ...); an unsigned op has the same entry for both signs.
  RandAugment's rounds each deal the batch again with a fresh permutation.

Every shape depends on the batch size alone, and the draws enter only as indices on the device:
no boolean masks, ``nonzero``, ``.item()`` or Python branch on a tensor's values. So nothing
waits for the GPU, and the same code can be captured in a CUDA graph. The tables are built once
per (policy, image size, channels, device, dtype) and kept; run the function once before
capturing it (a table built during a capture is not kept).

The op list, the 31 magnitude bins and the signed/unsigned rules are torchvision's
(``transforms.v2.RandAugment._AUGMENTATION_SPACE`` and ``TrivialAugmentWide._AUGMENTATION_SPACE``),
and each op follows ``torchvision.transforms.v2.functional`` on float images, with nearest
interpolation and fill 0 for the geometric ops. Images are (B, C, H, W) floats in [0, 1], C in
{1, 3}; the arithmetic runs in float32 (float64 for float64 input) and the result is cast back.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["NUM_MAGNITUDE_BINS", "OP_NAMES", "rand_augment", "trivial_augment"]

# torchvision's order. The ops with a magnitude sign are indices 1..9 and the geometric ones 1..5,
# so both sets are ranges, and the geometric ops' slots are adjacent.
OP_NAMES: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
NUM_MAGNITUDE_BINS = 31  # torchvision's default; bins 0..30
_NUM_CHOICES = 2 * NUM_MAGNITUDE_BINS  # columns of the parameter tables: 2 * bin + (sign < 0)
_OP = {name: i for i, name in enumerate(OP_NAMES)}
_SIGNED = range(_OP["ShearX"], _OP["Sharpness"] + 1)
_GEOMETRIC = range(_OP["ShearX"], _OP["Rotate"] + 1)
# Scalar parameters per op, in the units its kernel takes (see _build_tables); at most 3 per op.
_NUM_SCALARS = 3


def rand_augment(
    x: torch.Tensor, *, num_ops: int = 2, magnitude: int = 9, generator: torch.Generator
) -> torch.Tensor:
    """RandAugment (Cubuk et al. 2020): ``num_ops`` rounds, each image drawing a fresh op per round.

    ``magnitude`` is the bin (0..30) used by every op; signed ops flip its sign with probability
    1/2 per image and round. ``generator`` (on ``x``'s device) is the only source of randomness.
    Returns a new tensor of ``x``'s shape, dtype and device, values in [0, 1].
    """
    _check_input(x, generator)
    if num_ops < 0:
        raise ValueError(f"`num_ops >= 0` must hold, but got num_ops={num_ops}")
    if not 0 <= magnitude < NUM_MAGNITUDE_BINS:
        raise ValueError(
            f"`0 <= magnitude <= {NUM_MAGNITUDE_BINS - 1}` must hold, but got magnitude={magnitude}"
        )
    if num_ops == 0 or x.shape[0] == 0:
        return x.clone()
    out = x.to(_work_dtype(x.dtype))
    tables = _tables(False, *x.shape[1:], x.device, out.dtype)
    for _ in range(num_ops):
        draws = _draw(x.shape[0], level=magnitude, generator=generator, device=x.device)
        out = _augment(out, draws, tables)
    return out.to(x.dtype)


def trivial_augment(x: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """TrivialAugment-Wide (Müller & Hutter 2021): one op per image at a uniform bin in 0..30.

    ``generator`` (on ``x``'s device) is the only source of randomness. Returns a new tensor of
    ``x``'s shape, dtype and device, values in [0, 1].
    """
    _check_input(x, generator)
    if x.shape[0] == 0:
        return x.clone()
    work = x.to(_work_dtype(x.dtype))
    tables = _tables(True, *x.shape[1:], x.device, work.dtype)
    draws = _draw(x.shape[0], level=None, generator=generator, device=x.device)
    return _augment(work, draws, tables).to(x.dtype)


def _check_input(x: torch.Tensor, generator: torch.Generator) -> None:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"x must be (B, C, H, W) with C in (1, 3), but got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a float tensor with values in [0, 1], but got {x.dtype}")
    if generator.device.type != x.device.type:
        raise ValueError(
            f"generator must be on x's device, but got generator on {generator.device} "
            f"and x on {x.device}"
        )


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # float16/bfloat16 have 8-11 mantissa bits: too coarse for 256-level histograms and for the
    # sampling grid of a 32-pixel-wide image, so compute in float32 and cast back once at the end.
    # (torch.promote_types would be one more ATen op per call.)
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class _Draws:
    """One round's random choices for a batch of B images, dealt into 14 groups of m slots.

    Slot s belongs to op ``OP_NAMES[s // m]``.
    """

    image: torch.Tensor  # (14 m,) int64: the image in each slot; a value >= B marks padding
    choice: torch.Tensor  # (14, m) int64: 2 * bin + (1 if the sign is negative), in 0..61


def _draw(
    batch: int, *, level: int | None, generator: torch.Generator, device: torch.device | str
) -> _Draws:
    """Deal ``batch`` images into slots and draw each slot's bin and sign (see ``_Draws``).

    ``level=None`` draws the bin uniformly from 0..30 (TrivialAugment), else every slot gets bin
    ``level`` (RandAugment). The sign is + or - with probability 1/2 either way; unsigned ops
    ignore it. The only draws from ``generator`` that the augmentation makes.
    """
    per_op = -(-batch // len(OP_NAMES))
    image = torch.randperm(per_op * len(OP_NAMES), generator=generator, device=device)
    low, high = (0, _NUM_CHOICES) if level is None else (2 * level, 2 * level + 2)
    shape = (len(OP_NAMES), per_op)
    choice = torch.randint(low, high, shape, generator=generator, device=device)
    return _Draws(image=image, choice=choice)


@dataclass(frozen=True)
class _Tables:
    """Per-(op, choice) parameters, derived once from the signed magnitudes (see ``_tables``)."""

    scalars: torch.Tensor  # (3, 14, 62): the op's scalar parameters, unused ones 0
    theta: torch.Tensor  # (5, 62, 2, 3): affine_grid's matrix for each geometric op
    ops: torch.Tensor  # (14, 1) int64: 0..13, to index ``scalars`` per slot
    geometric: torch.Tensor  # (5, 1) int64: 0..4, to index ``theta`` per slot
    blur: torch.Tensor  # (C, 1, 3, 3): Sharpness's smoothing kernel, one per channel


def _tables(
    wide: bool, channels: int, height: int, width: int, device: torch.device, dtype: torch.dtype
) -> _Tables:
    """The tables for TrivialAugment (``wide``) or RandAugment on such images; built once, kept.

    Not kept while a CUDA graph is being captured: the table would live in the graph's memory
    and hold its values only after a replay.
    """
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return _build_tables(wide, channels, height, width, device, dtype)
    with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable anywhere
        return _cached_tables(wide, channels, height, width, device, dtype)


def _build_tables(
    wide: bool, channels: int, height: int, width: int, device: torch.device, dtype: torch.dtype
) -> _Tables:
    """Build ``_Tables`` in ``dtype``; every value is computed by the formula the op used per image.

    Column j of op k holds the op at bin j // 2, with the sign negated when j is odd and the op is
    signed. The scalar rows, per op:
      Brightness: factor 1 + m;  Color, Contrast: ratio 1 + m, 1 - ratio;  Sharpness: 1 - (1 + m);
      Posterize: 2**bits, 2**bits - 1, 1 / 2**bits with bits = trunc(m);  Solarize: threshold m.
    """
    ops = torch.arange(len(OP_NAMES), device=device).view(-1, 1)
    unsigned = _magnitude_table(wide=wide, height=height, width=width, device=device).to(dtype)
    signed = (ops >= _SIGNED.start) & (ops < _SIGNED.stop)
    flip = torch.where(signed, -1.0, 1.0).to(dtype)  # (14, 1)
    # (14, 31, 2) -> (14, 62): column 2 * bin + (sign < 0).
    magnitude = torch.stack([unsigned, unsigned * flip], dim=-1).view(len(OP_NAMES), _NUM_CHOICES)

    scalars = magnitude.new_zeros(_NUM_SCALARS, len(OP_NAMES), _NUM_CHOICES)
    for name in ("Brightness", "Color", "Contrast"):
        ratio = 1.0 + magnitude[_OP[name]]
        scalars[0, _OP[name]] = ratio
        scalars[1, _OP[name]] = 1.0 - ratio  # Brightness does not use it
    scalars[0, _OP["Sharpness"]] = 1.0 - (1.0 + magnitude[_OP["Sharpness"]])
    levels = torch.exp2(magnitude[_OP["Posterize"]].trunc())
    scalars[:, _OP["Posterize"]] = torch.stack([levels, levels - 1.0, 1.0 / levels])
    scalars[0, _OP["Solarize"]] = magnitude[_OP["Solarize"]]

    blur = torch.full((channels, 1, 3, 3), 1.0 / 13.0, dtype=dtype, device=device)
    blur[:, :, 1, 1] = 5.0 / 13.0
    return _Tables(
        scalars=scalars,
        theta=_affine_theta(magnitude[_GEOMETRIC.start : _GEOMETRIC.stop], height, width),
        ops=ops,
        geometric=torch.arange(len(_GEOMETRIC), device=device).view(-1, 1),
        blur=blur,
    )


# A few entries: one per (policy, image size, channels, device, dtype) that a process uses.
_cached_tables = functools.lru_cache(maxsize=32)(_build_tables)


def _magnitude_table(
    *, wide: bool, height: int, width: int, device: torch.device | str
) -> torch.Tensor:
    """(len(OP_NAMES), 31) float32: the unsigned magnitude of every op at every bin.

    Rows mirror torchvision v2's ``_AUGMENTATION_SPACE`` of ``TrivialAugmentWide`` (``wide``) or
    ``RandAugment``; ops without a magnitude get 0. Units: shear as tan(angle), translate in pixels
    (truncated toward 0 when applied), rotate in degrees, Posterize in bits, Solarize as a
    threshold in [0, 1]. Built on ``device`` from ``linspace``, so no host-to-device copy.
    """
    n = NUM_MAGNITUDE_BINS

    def ramp(end: float) -> torch.Tensor:
        return torch.linspace(0.0, end, n, device=device)

    zero = torch.zeros(n, device=device)
    bins = torch.arange(n, device=device, dtype=torch.float32)
    if wide:
        shear, tx, ty, rotate, enhance = ramp(0.99), ramp(32.0), ramp(32.0), ramp(135.0), 0.99
        posterize = (8 - bins / ((n - 1) / 6)).round()  # 8 bits down to 2
    else:
        shear, rotate, enhance = ramp(0.3), ramp(30.0), 0.9
        # 150/331 of the side: the paper's 150 px on 331-px ImageNet crops.
        tx, ty = ramp(150.0 / 331.0 * width), ramp(150.0 / 331.0 * height)
        posterize = (8 - bins / ((n - 1) / 4)).round()  # 8 bits down to 4
    solarize = torch.linspace(1.0, 0.0, n, device=device)
    rows = {
        "ShearX": shear,
        "ShearY": shear,
        "TranslateX": tx,
        "TranslateY": ty,
        "Rotate": rotate,
        "Brightness": ramp(enhance),
        "Color": ramp(enhance),
        "Contrast": ramp(enhance),
        "Sharpness": ramp(enhance),
        "Posterize": posterize,
        "Solarize": solarize,
    }
    return torch.stack([rows.get(name, zero) for name in OP_NAMES])


def _affine_theta(magnitude: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(5, N) signed magnitudes of ShearX/Y, TranslateX/Y, Rotate -> (5, N, 2, 3) for affine_grid.

    torchvision maps each output pixel, in pixel units centred on the image, through the inverse
    matrix A (2x3) to the source pixel. Its four calls, for one image, give:
      ShearX(m):     x_s = x + m*y + m*H/2   (``shear=atan(m)`` deg, ``center=[0, 0]``: top-left)
      ShearY(m):     y_s = y + m*x + m*W/2
      Translate(t):  x_s = x - int(t)        (``translate=[int(t), 0]``; likewise y)
      Rotate(a deg): x_s = cos(a) x - sin(a) y,  y_s = sin(a) x + cos(a) y  (counter-clockwise)
    Row k holds op k's terms and 0 for the others', so one formula serves all five.
    """
    op = torch.arange(len(_GEOMETRIC), device=magnitude.device).view(-1, 1) + _GEOMETRIC.start

    def term(name: str) -> torch.Tensor:
        return torch.where(op == _OP[name], magnitude, 0.0)

    shear_x, shear_y = term("ShearX"), term("ShearY")
    shift_x, shift_y = term("TranslateX").trunc(), term("TranslateY").trunc()
    angle = torch.deg2rad(term("Rotate"))
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid works in [-1, 1] coordinates (align_corners=False: pixel edges at +-1), i.e.
    # pixel units divided by S = diag(W/2, H/2): theta = S^-1 A S on the linear part, S^-1 on
    # the shift.
    theta = torch.stack(
        [
            cos,
            (shear_x - sin) * (height / width),
            (shear_x * (height / 2) - shift_x) * (2 / width),
            (sin + shear_y) * (width / height),
            cos,
            (shear_y * (width / 2) - shift_y) * (2 / height),
        ],
        dim=-1,
    )
    return theta.view(*magnitude.shape, 2, 3)


def _augment(x: torch.Tensor, draws: _Draws, tables: _Tables) -> torch.Tensor:
    """One round: image ``draws.image[s]`` gets op ``s // m`` at column ``draws.choice`` of slot s.

    x: (B, C, H, W) in the work dtype, values in [0, 1]. Returns a new tensor like ``x``.
    """
    batch, channels, height, width = x.shape
    num_ops, per_op = draws.choice.shape
    # (14 m, C, H, W) in slot order; a padding slot gets the last image, whose result is dropped.
    slots = x.index_select(0, draws.image.clamp(max=batch - 1))
    group = slots.view(num_ops, per_op, channels, height, width).unbind(0)  # 14 x (m, C, H, W)
    # 42 x (m, 1, 1, 1): scalar j of op k at index j * 14 + k, each slot's own value.
    scalars = tables.scalars[:, tables.ops, draws.choice]
    scalar = scalars.view(-1, per_op, 1, 1, 1).unbind(0)

    def param(name: str, j: int = 0) -> torch.Tensor:
        return scalar[j * num_ops + _OP[name]]

    geometric = slots[_GEOMETRIC.start * per_op : _GEOMETRIC.stop * per_op]
    theta = tables.theta[tables.geometric, draws.choice[_GEOMETRIC.start : _GEOMETRIC.stop]]
    # Color and Contrast are adjacent: one grayscale for both.
    gray = _grayscale(slots[_OP["Color"] * per_op : (_OP["Contrast"] + 1) * per_op])
    color, contrast = group[_OP["Color"]], group[_OP["Contrast"]]
    pieces = [  # in slot order
        group[_OP["Identity"]],
        _warp(geometric, theta.view(-1, 2, 3)),
        _brightness(group[_OP["Brightness"]], param("Brightness")),
        _saturation(color, gray[:per_op], param("Color"), param("Color", 1)),
        _contrast(contrast, gray[per_op:], param("Contrast"), param("Contrast", 1)),
        _sharpness(group[_OP["Sharpness"]], tables.blur, param("Sharpness")),
        _posterize(
            group[_OP["Posterize"]],
            param("Posterize"),
            param("Posterize", 1),
            param("Posterize", 2),
        ),
        _solarize(group[_OP["Solarize"]], param("Solarize")),
        _autocontrast(group[_OP["AutoContrast"]]),
        _equalize(group[_OP["Equalize"]]),
    ]
    # Image i sits in the slot where the permutation holds i: the inverse's first B entries.
    return torch.cat(pieces).index_select(0, draws.image.argsort()[:batch])


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample each image (N, C, H, W) through its (N, 2, 3) matrix: nearest, fill 0."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _blend(
    x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor, complement: torch.Tensor
) -> torch.Tensor:
    # v2 ``_blend``: ratio * x + (1 - ratio) * other, clamped to [0, 1]; complement = 1 - ratio.
    return (x * ratio + other * complement).clamp(0.0, 1.0)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma with torchvision's ITU-R 601 weights; a 1-channel image is its own."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    return (r * 0.2989 + g * 0.587 + b * 0.114).unsqueeze(1)


def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor).clamp(0.0, 1.0)


def _saturation(
    x: torch.Tensor, gray: torch.Tensor, ratio: torch.Tensor, complement: torch.Tensor
) -> torch.Tensor:
    if x.shape[1] == 1:  # torchvision (and PIL) leave a grayscale image as it is
        return x
    return _blend(x, gray, ratio, complement)


def _contrast(
    x: torch.Tensor, gray: torch.Tensor, ratio: torch.Tensor, complement: torch.Tensor
) -> torch.Tensor:
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return _blend(x, mean, ratio, complement)


def _sharpness(x: torch.Tensor, kernel: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Blend with a 3x3 smoothing (centre 5/13, ring 1/13) inside a 1-pixel border kept as is.

    ``kernel`` (C, 1, 3, 3); ``weight`` = 1 - factor, the smoothed image's share.
    """
    _, channels, height, width = x.shape
    if height <= 2 or width <= 2:  # torchvision returns such images unchanged
        return x
    # Depthwise, as torchvision does: (B, C, H-2, W-2), no padding.
    blurred = F.conv2d(x, kernel, groups=channels)
    out = x.clone()
    inner = out[..., 1:-1, 1:-1]  # still x's values: inner + (blurred - inner) * (1 - factor)
    inner.add_((blurred - inner) * weight)
    return out.clamp(0.0, 1.0)


def _posterize(
    x: torch.Tensor, levels: torch.Tensor, top: torch.Tensor, step: torch.Tensor
) -> torch.Tensor:
    # v2 ``posterize_image`` on float input: levels = 2**bits, floor(x * levels) / levels, with
    # top = levels - 1 and step = 1 / levels. Masking the top bits of uint8 levels instead would
    # give k * 2**(8 - bits) / 255: 256/255 of this.
    return torch.minimum((x * levels).floor().clamp(min=0.0), top) * step


def _solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= threshold, 1.0 - x, x)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch each channel to [0, 1]; a constant channel is left as it is."""
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    flat = high == low
    low = low.masked_fill(flat, 0.0)
    span = (high - low).masked_fill(flat, 1.0)
    return ((x - low) / span).clamp(0.0, 1.0)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel on 8-bit levels, as v2 ``equalize_image``.

    Float input is first turned into uint8 levels the way v2 ``to_dtype`` does (x * 255.999,
    truncated), so the output is always a multiple of 1/255, like torchvision's.
    """
    batch, channels, height, width = x.shape
    pixels = height * width
    levels = (x * (255.0 + 1.0 - 1e-3)).clamp(0.0, 255.0).long().view(batch * channels, pixels)
    hist = torch.zeros(batch * channels, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, levels, torch.ones_like(levels))  # (B*C, 256) pixel counts
    cum = hist.cumsum(dim=1)
    # PIL's LUT: pixels below the brightest occupied level, in 255 steps; level k maps to
    # (cum[k-1] + step // 2) // step, and a channel with step 0 (nearly constant) is unchanged.
    brightest = cum.argmax(dim=1, keepdim=True)  # first level at which cum reaches `pixels`
    step = (pixels - hist.gather(1, brightest)).div(255, rounding_mode="floor")  # (B*C, 1)
    lut = (cum[:, :-1] + step // 2).div(step.clamp(min=1), rounding_mode="floor").clamp(0, 255)
    lut = F.pad(lut, (1, 0))  # (B*C, 256): level 0 maps to 0
    equalized = torch.where(step != 0, lut.gather(1, levels), levels)
    return (equalized.to(x.dtype) * (1.0 / 255.0)).view_as(x)


def main(argv: list[str] | None = None) -> int:
    """Print ATen operations per call and CPU throughput: ``python -m search.autoaugment``."""
    import argparse
    import time

    from search.opcount import count_aten_ops

    parser = argparse.ArgumentParser(prog="python -m search.autoaugment", description=main.__doc__)
    parser.add_argument("--batch", type=int, nargs="+", default=[512, 8192], help="images per call")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"3x32x32 float32 images on CPU, {torch.get_num_threads()} threads")
    for batch in args.batch:
        images = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        gen = torch.Generator().manual_seed(0)
        for name, augment in (
            ("trivial_augment", functools.partial(trivial_augment, generator=gen)),
            (
                "rand_augment(magnitude=9)",
                functools.partial(rand_augment, magnitude=9, generator=gen),
            ),
        ):
            augment(images)  # warm-up; builds the tables
            _, ops = count_aten_ops(augment, images)
            # Per-call times; the median and the best, as other processes may share the CPU.
            times: list[float] = []
            while len(times) < 5 or sum(times) < args.seconds:
                start = time.perf_counter()
                augment(images)
                times.append(time.perf_counter() - start)
            times.sort()
            median, best = batch / times[len(times) // 2], batch / times[0]
            print(
                f"{name:>26}, batch {batch:>5}: {ops:4d} ATen ops/call, "
                f"{median:9,.0f} images/s (median of {len(times)} calls), best {best:9,.0f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
