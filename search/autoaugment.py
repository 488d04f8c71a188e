"""RandAugment and TrivialAugment-Wide for a whole batch at once, on the batch's device.

torchvision's ``RandAugment`` / ``TrivialAugmentWide`` draw one op per call, from the global RNG,
read on the host; a batch passed to them gets the same op for every image. So a loader that keeps
the dataset on the GPU would have to loop over its images. Here every image draws its own op,
magnitude bin and sign from one ``torch.Generator``, and the ops run as a fixed sequence of
batched kernels:

- the geometric ops (ShearX/Y, TranslateX/Y, Rotate) share one ``affine_grid`` + ``grid_sample``
  with a per-image matrix (the identity for images that drew another op);
- each colour op is computed for the whole batch and kept, with ``torch.where``, for the images
  that drew it. Boolean indexing would compute less, but its output size depends on the data, so
  on CUDA it waits for the GPU; this way nothing syncs and the work is ~14 cheap passes per round.

The op list, the 31 magnitude bins and the signed/unsigned rules are torchvision's
(``transforms.v2.RandAugment._AUGMENTATION_SPACE`` and ``TrivialAugmentWide._AUGMENTATION_SPACE``),
and each op follows ``torchvision.transforms.v2.functional`` on float images, with nearest
interpolation and fill 0 for the geometric ops. Images are (B, C, H, W) floats in [0, 1], C in
{1, 3}; the arithmetic runs in float32 (float64 for float64 input) and the result is cast back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["NUM_MAGNITUDE_BINS", "OP_NAMES", "rand_augment", "trivial_augment"]

# torchvision's order. The ops with a magnitude sign are indices 1..9 and the geometric ones 1..5,
# so both sets are ranges and need no lookup table on the device.
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
_OP = {name: i for i, name in enumerate(OP_NAMES)}
_SIGNED = range(_OP["ShearX"], _OP["Sharpness"] + 1)
_GEOMETRIC = range(_OP["ShearX"], _OP["Rotate"] + 1)


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
    if num_ops == 0:
        return x.clone()
    batch, _, height, width = x.shape
    table = _magnitude_table(wide=False, height=height, width=width, device=x.device)
    out = x.to(_work_dtype(x.dtype))
    for _ in range(num_ops):
        op = torch.randint(len(OP_NAMES), (batch,), generator=generator, device=x.device)
        sign = _random_sign(op, generator)
        out = _apply_ops(out, op, table[op, magnitude] * sign)
    return out.to(x.dtype)


def trivial_augment(x: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """TrivialAugment-Wide (Müller & Hutter 2021): one op per image at a uniform bin in 0..30.

    ``generator`` (on ``x``'s device) is the only source of randomness. Returns a new tensor of
    ``x``'s shape, dtype and device, values in [0, 1].
    """
    _check_input(x, generator)
    batch, _, height, width = x.shape
    table = _magnitude_table(wide=True, height=height, width=width, device=x.device)
    op = torch.randint(len(OP_NAMES), (batch,), generator=generator, device=x.device)
    level = torch.randint(NUM_MAGNITUDE_BINS, (batch,), generator=generator, device=x.device)
    sign = _random_sign(op, generator)
    out = _apply_ops(x.to(_work_dtype(x.dtype)), op, table[op, level] * sign)
    return out.to(x.dtype)


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
    return torch.promote_types(dtype, torch.float32)


def _random_sign(op: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B,) float: -1 with probability 1/2 for images whose op is signed, else +1."""
    flip = torch.rand(op.shape, generator=generator, device=op.device) < 0.5
    signed = (op >= _SIGNED.start) & (op < _SIGNED.stop)
    return torch.where(flip & signed, -1.0, 1.0)


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


def _apply_ops(x: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Apply op ``OP_NAMES[op[i]]`` at ``magnitude[i]`` to image ``x[i]``, for every i at once.

    x: (B, C, H, W) float in [0, 1]; op: (B,) int64; magnitude: (B,) float, signed, in the units
    of ``_magnitude_table`` (the value torchvision passes to its per-op kernel). Returns a new
    tensor like ``x``. Every op is computed for the whole batch and selected per image, so no
    step depends on which ops were drawn (no host sync on CUDA).
    """
    work = x.to(_work_dtype(x.dtype))
    magnitude = magnitude.to(work.dtype)

    def chose(name: str) -> torch.Tensor:
        return op == _OP[name]

    def param(name: str, neutral: float) -> torch.Tensor:
        # (B, 1, 1, 1): the image's magnitude where it drew `name`, else a harmless value, so the
        # images that discard this op's result never see e.g. a 135-"bit" posterize.
        return torch.where(chose(name), magnitude, neutral).view(-1, 1, 1, 1)

    def keep(name: str, result: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return torch.where(chose(name).view(-1, 1, 1, 1), result, out)

    geometric = (op >= _GEOMETRIC.start) & (op < _GEOMETRIC.stop)
    out = torch.where(geometric.view(-1, 1, 1, 1), _warp(work, op, magnitude), work)
    out = keep("Brightness", _brightness(work, 1.0 + param("Brightness", 0.0)), out)
    out = keep("Color", _saturation(work, 1.0 + param("Color", 0.0)), out)
    out = keep("Contrast", _contrast(work, 1.0 + param("Contrast", 0.0)), out)
    out = keep("Sharpness", _sharpness(work, 1.0 + param("Sharpness", 0.0)), out)
    out = keep("Posterize", _posterize(work, param("Posterize", 8.0).trunc()), out)
    out = keep("Solarize", _solarize(work, param("Solarize", 1.0)), out)
    out = keep("AutoContrast", _autocontrast(work), out)
    out = keep("Equalize", _equalize(work), out)
    return out.to(x.dtype)


def _warp(x: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """ShearX/Y, TranslateX/Y and Rotate as torchvision v2 ``affine`` / ``rotate`` do them.

    torchvision maps each output pixel, in pixel units centred on the image, through the inverse
    matrix A (2x3) to the source pixel. Its four calls, for one image, give:
      ShearX(m):     x_s = x + m*y + m*H/2   (``shear=atan(m)`` deg, ``center=[0, 0]``: top-left)
      ShearY(m):     y_s = y + m*x + m*W/2
      Translate(t):  x_s = x - int(t)        (``translate=[int(t), 0]``; likewise y)
      Rotate(a deg): x_s = cos(a) x - sin(a) y,  y_s = sin(a) x + cos(a) y  (counter-clockwise)
    Each image drew one op, so the others' terms are 0 and one sum of all terms is its A.
    """
    batch, _, height, width = x.shape

    def term(name: str) -> torch.Tensor:
        return torch.where(op == _OP[name], magnitude, 0.0)

    shear_x, shear_y = term("ShearX"), term("ShearY")
    shift_x, shift_y = term("TranslateX").trunc(), term("TranslateY").trunc()
    angle = torch.deg2rad(term("Rotate"))
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid works in [-1, 1] coordinates (align_corners=False: pixel edges at +-1), i.e.
    # pixel units divided by S = diag(W/2, H/2): theta = S^-1 A S on the linear part, S^-1 on
    # the shift. Python-scalar factors only, so nothing is copied from the host.
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
    ).view(batch, 2, 3)
    grid = F.affine_grid(theta, [batch, x.shape[1], height, width], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    # v2 ``_blend``: ratio * x + (1 - ratio) * other, clamped to [0, 1].
    return (x * ratio + other * (1.0 - ratio)).clamp(0.0, 1.0)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma with torchvision's ITU-R 601 weights; a 1-channel image is its own."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    return (r * 0.2989 + g * 0.587 + b * 0.114).unsqueeze(1)


def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor).clamp(0.0, 1.0)


def _saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:  # torchvision (and PIL) leave a grayscale image as it is
        return x
    return _blend(x, _grayscale(x), factor)


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return _blend(x, mean, factor)


def _sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with a 3x3 smoothing (centre 5/13, ring 1/13) inside a 1-pixel border kept as is."""
    _, channels, height, width = x.shape
    if height <= 2 or width <= 2:  # torchvision returns such images unchanged
        return x
    kernel = x.new_full((1, 1, 3, 3), 1.0 / 13.0)
    kernel[0, 0, 1, 1] = 5.0 / 13.0
    # Depthwise, as torchvision does: (B, C, H-2, W-2), no padding.
    blurred = F.conv2d(x, kernel.expand(channels, 1, 3, 3), groups=channels)
    inner = x[..., 1:-1, 1:-1]
    out = x.clone()
    out[..., 1:-1, 1:-1] = inner + (blurred - inner) * (1.0 - factor)
    return out.clamp(0.0, 1.0)


def _posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    # v2 ``posterize_image`` on float input: 2**bits levels, floor(x * levels) / levels. Masking
    # the top bits of uint8 levels instead would give k * 2**(8 - bits) / 255: 256/255 of this.
    levels = torch.exp2(bits)
    return torch.minimum((x * levels).floor().clamp(min=0.0), levels - 1.0) * (1.0 / levels)


def _solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= threshold, 1.0 - x, x)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch each channel to [0, 1]; a constant channel is left as it is."""
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    flat = high == low
    low = torch.where(flat, 0.0, low)
    span = torch.where(flat, 1.0, high - low)
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
    lut = torch.cat([lut.new_zeros(batch * channels, 1), lut], dim=1)  # (B*C, 256)
    equalized = torch.where(step != 0, lut.gather(1, levels), levels)
    return (equalized.to(x.dtype) * (1.0 / 255.0)).view_as(x)


if __name__ == "__main__":
    # Throughput on this machine's CPU: python -m search.autoaugment
    import time

    images = torch.rand(512, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    trivial_augment(images, generator=gen)  # warm-up
    repeats = 20
    start = time.perf_counter()
    for _ in range(repeats):
        trivial_augment(images, generator=gen)
    seconds = time.perf_counter() - start
    print(
        f"trivial_augment, 512x3x32x32 float32 on CPU ({torch.get_num_threads()} threads): "
        f"{repeats * images.shape[0] / seconds:,.0f} images/s"
    )
