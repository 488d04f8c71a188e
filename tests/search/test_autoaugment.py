"""Batched RandAugment / TrivialAugment-Wide against torchvision v2, image by image.

The reference is torchvision's own per-op dispatch (``_apply_image_or_video_transform`` of the v2
auto-augment classes, which calls ``v2.functional.affine``/``rotate``/``adjust_*``/...), fed
the magnitudes from torchvision's own ``_AUGMENTATION_SPACE`` tables.
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix

from search.autoaugment import (
    NUM_MAGNITUDE_BINS,
    OP_NAMES,
    _apply_ops,
    _magnitude_table,
    _random_sign,
    rand_augment,
    trivial_augment,
)

RAND = v2.RandAugment()
WIDE = v2.TrivialAugmentWide()
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
SIGNED = frozenset(name for name, (_, signed) in WIDE._AUGMENTATION_SPACE.items() if signed)

# Colour ops: the same float32 formulas as torchvision, up to the order of a few roundings
# (e.g. 1 - (1 + m) in float32 instead of -m in float64): ~1e-7 on [0, 1] values, so 1e-5 is
# loose enough and still far below one 8-bit level (3.9e-3). Posterize and Equalize go through
# the same floor / uint8 levels as torchvision and in practice match exactly.
COLOUR_ATOL = 1e-5
# Geometric ops: nearest sampling rounds the source coordinate; where it is a half-integer in
# exact arithmetic (e.g. ShearX 0.2 on row 2: 0.2 * 2.5 = 0.5), float noise decides the side, and
# affine_grid's [-1, 1] arithmetic and torchvision's pixel-unit one may decide differently. Such
# ties cover at most 1 row (column) in 5 for RandAugment's shears; seen: <5% of the pixels.
# So: every differing pixel must be such a tie, and at most 10% of them may differ.
TIE_EPS = 1e-4  # px: how close to a half-integer counts as a tie (float32 noise is ~1e-5 px)
MAX_TIE_FRACTION = 0.10


def tv_magnitude(transform: v2.Transform, name: str, level: int, height: int, width: int) -> float:
    """The unsigned magnitude torchvision's transform uses for ``name`` at bin ``level``."""
    magnitudes_fn, _ = transform._AUGMENTATION_SPACE[name]
    magnitudes = magnitudes_fn(NUM_MAGNITUDE_BINS, height, width)
    return 0.0 if magnitudes is None else float(magnitudes[level])


def reference(image: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    """One (C, H, W) image through torchvision's op, nearest interpolation, fill 0."""
    return WIDE._apply_image_or_video_transform(
        image, name, magnitude, interpolation=WIDE.interpolation, fill=WIDE._fill
    )


def ties(name: str, magnitude: float, height: int, width: int) -> torch.Tensor:
    """(H, W) bool: output pixels whose source coordinate is a half-integer (a rounding tie).

    The matrix is the one torchvision's v2 ``affine`` / ``rotate`` build for the op, evaluated in
    float64 at every output pixel centre, in the image-centred pixel units torchvision uses.
    """
    center, angle, translate, shear = [0.0, 0.0], 0.0, [0.0, 0.0], [0.0, 0.0]
    if name == "ShearX":  # center=[0, 0] in the op, i.e. the top-left corner
        center, shear = [-width / 2, -height / 2], [math.degrees(math.atan(magnitude)), 0.0]
    elif name == "ShearY":
        center, shear = [-width / 2, -height / 2], [0.0, math.degrees(math.atan(magnitude))]
    elif name == "TranslateX":
        translate = [float(int(magnitude)), 0.0]
    elif name == "TranslateY":
        translate = [0.0, float(int(magnitude))]
    elif name == "Rotate":
        angle = -magnitude  # rotate_image passes -angle to the affine matrix
    m = _get_inverse_affine_matrix(center, angle, translate, 1.0, shear)
    y, x = torch.meshgrid(
        torch.arange(height, dtype=torch.float64) - (height - 1) / 2,
        torch.arange(width, dtype=torch.float64) - (width - 1) / 2,
        indexing="ij",
    )
    source_x = m[0] * x + m[1] * y + m[2] + (width - 1) / 2  # in input pixel indices
    source_y = m[3] * x + m[4] * y + m[5] + (height - 1) / 2

    def tie(p: torch.Tensor) -> torch.Tensor:
        return (p - p.floor() - 0.5).abs() < TIE_EPS

    return tie(source_x) | tie(source_y)


def mismatch(got: torch.Tensor, want: torch.Tensor, name: str, magnitude: float) -> str | None:
    """Why the (C, H, W) ``got`` is not torchvision's ``want`` for this op, or None if it is."""
    if name not in GEOMETRIC:
        err = (got - want).abs().max().item()
        return None if err <= COLOUR_ATOL else f"max abs error {err:.3g}"
    differs = (got - want).abs().amax(dim=0) > COLOUR_ATOL  # (H, W)
    allowed = ties(name, magnitude, *got.shape[-2:])
    if (differs & ~allowed).any():
        return f"{int((differs & ~allowed).sum())} non-tie pixels differ"
    if differs.float().mean() > MAX_TIE_FRACTION:
        return f"{differs.float().mean():.1%} of the pixels differ"
    return None


def batch(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random images in [0, 1] with edge cases: some exact 0s and 1s, and (with 2 or more images)
    a constant first channel of image 1, which AutoContrast and Equalize must leave as it is."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen)
    x[..., 0, :3] = 0.0
    x[..., -1, -3:] = 1.0
    if shape[0] >= 2:
        x[1, 0] = 0.25
    return x


def signed_levels(name: str) -> list[tuple[v2.Transform, int, int]]:
    """(transform, bin, sign) cases: both ends of both tables, 90 deg turns, RandAugment's ties."""
    cases = [(WIDE, 30, 1), (WIDE, 20, -1), (WIDE, 13, 1), (RAND, 9, -1), (RAND, 20, 1)]
    return [(t, level, sign if name in SIGNED else 1) for t, level, sign in cases]


# 32x32: Equalize's rounding term (step // 2) is 0 below 510 pixels per channel.
@pytest.mark.parametrize("shape", [(4, 3, 16, 16), (3, 3, 12, 20), (2, 1, 16, 16), (2, 3, 32, 32)])
@pytest.mark.parametrize("name", OP_NAMES)
def test_each_op_matches_torchvision(name: str, shape: tuple[int, int, int, int]) -> None:
    x = batch(shape, seed=OP_NAMES.index(name))
    n, _, height, width = shape
    for transform, level, sign in signed_levels(name):
        magnitude = sign * tv_magnitude(transform, name, level, height, width)
        got = _apply_ops(x, torch.full((n,), OP_NAMES.index(name)), torch.full((n,), magnitude))
        for i in range(n):
            why = mismatch(got[i], reference(x[i], name, magnitude), name, magnitude)
            assert why is None, f"{name} at {magnitude} on {tuple(shape)}, image {i}: {why}"


def test_each_image_gets_its_own_op_and_magnitude() -> None:
    # Every op twice in one non-square batch, each image at its own bin and sign.
    gen = torch.Generator().manual_seed(1)
    height, width = 12, 20
    op = torch.arange(len(OP_NAMES)).repeat(2)
    level = torch.randint(NUM_MAGNITUDE_BINS, op.shape, generator=gen)
    sign = torch.where(torch.rand(op.shape, generator=gen) < 0.5, -1.0, 1.0)
    names = [OP_NAMES[k] for k in op.tolist()]
    magnitude = [
        (s if name in SIGNED else 1.0) * tv_magnitude(WIDE, name, lv, height, width)
        for name, lv, s in zip(names, level.tolist(), sign.tolist(), strict=True)
    ]
    x = batch((len(names), 3, height, width), seed=2)
    got = _apply_ops(x, op, torch.tensor(magnitude))
    for i, (name, m) in enumerate(zip(names, magnitude, strict=True)):
        why = mismatch(got[i], reference(x[i], name, m), name, m)
        assert why is None, f"image {i}, {name} at {m}: {why}"


@pytest.mark.parametrize("size", [(16, 16), (12, 20)])
@pytest.mark.parametrize("transform", [RAND, WIDE], ids=["rand", "wide"])
def test_magnitude_table_is_torchvisions(transform: v2.Transform, size: tuple[int, int]) -> None:
    assert tuple(transform._AUGMENTATION_SPACE) == OP_NAMES
    table = _magnitude_table(wide=transform is WIDE, height=size[0], width=size[1], device="cpu")
    want = torch.tensor(
        [
            [tv_magnitude(transform, name, level, *size) for level in range(NUM_MAGNITUDE_BINS)]
            for name in OP_NAMES
        ]
    )
    torch.testing.assert_close(table, want, atol=1e-6, rtol=0)


def test_only_signed_ops_flip_sign() -> None:
    op = torch.arange(len(OP_NAMES)).repeat(100)
    sign = _random_sign(op, torch.Generator().manual_seed(0)).view(100, len(OP_NAMES))
    for k, name in enumerate(OP_NAMES):
        if name in SIGNED:
            # 100 fair coins: P(fewer than 25 heads) ~ 1e-7.
            assert 25 <= int((sign[:, k] < 0).sum()) <= 75, name
        else:
            assert (sign[:, k] == 1).all(), name


Candidate = tuple[str, float, torch.Tensor]  # op name, signed magnitude, torchvision's output


def matches_some(got: torch.Tensor, candidates: list[Candidate]) -> str | None:
    """The op of the first candidate that ``got`` matches, or None."""
    for name, magnitude, want in candidates:
        if mismatch(got, want, name, magnitude) is None:
            return name
    return None


def test_rand_augment_draws_torchvision_ops_per_image() -> None:
    # 64 copies of one image, one round: each output must be torchvision's result for one of the
    # 14 ops at bin 9 with either sign, and the batch must show many different ops.
    image = batch((1, 3, 16, 16), seed=3)[0]
    candidates: list[Candidate] = []
    for name in OP_NAMES:
        for s in (1.0, -1.0) if name in SIGNED else (1.0,):
            m = s * tv_magnitude(RAND, name, 9, 16, 16)
            candidates.append((name, m, reference(image, name, m)))
    out = rand_augment(
        image.expand(64, -1, -1, -1),
        num_ops=1,
        magnitude=9,
        generator=torch.Generator().manual_seed(0),
    )
    seen = set()
    for i in range(64):
        name = matches_some(out[i], candidates)
        assert name is not None, f"image {i} is no torchvision op at bin 9"
        seen.add(name)
    # Ops that give the same image (Identity; AutoContrast/Equalize on some images) all count as
    # the first match; 64 uniform draws from 14 ops still reach >= 10 distinct ones.
    assert len(seen) >= 10, seen


def test_trivial_augment_draws_torchvision_ops_and_bins_per_image() -> None:
    image = batch((1, 3, 12, 20), seed=4)[0]
    candidates: list[Candidate] = []
    for name in OP_NAMES:
        signs = (1.0, -1.0) if name in SIGNED else (1.0,)
        magnitudes = {s * tv_magnitude(WIDE, name, lv, 12, 20) for lv in range(31) for s in signs}
        candidates += [(name, m, reference(image, name, m)) for m in sorted(magnitudes)]
    out = trivial_augment(image.expand(64, -1, -1, -1), generator=torch.Generator().manual_seed(0))
    for i in range(64):
        assert matches_some(out[i], candidates) is not None, f"image {i} is no torchvision op"


def test_images_are_augmented_independently() -> None:
    image = batch((1, 3, 16, 16), seed=5)
    x = image.expand(256, -1, -1, -1)
    for out in (
        trivial_augment(x, generator=torch.Generator().manual_seed(0)),
        rand_augment(x, num_ops=2, magnitude=15, generator=torch.Generator().manual_seed(0)),
    ):
        distinct = torch.unique(out.flatten(1), dim=0).shape[0]
        # ~600 (op, bin, sign) outcomes for TrivialAugment, 27^2 pairs for RandAugment.
        assert distinct >= 100, distinct
        changed = (out != image).flatten(1).any(dim=1)
        assert 0.5 < changed.float().mean() < 1.0  # Identity (and bin 0) leave a few as they are


def test_rand_augment_without_ops_is_the_identity() -> None:
    x = batch((8, 3, 16, 16), seed=6)
    out = rand_augment(x, num_ops=0, generator=torch.Generator())
    assert torch.equal(out, x)
    assert out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("augment", ["rand", "trivial"])
def test_same_seed_same_output(augment: str) -> None:
    x = batch((32, 3, 16, 16), seed=7)

    def run(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        if augment == "rand":
            return rand_augment(x, num_ops=2, magnitude=9, generator=gen)
        return trivial_augment(x, generator=gen)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_is_a_valid_image_of_the_same_kind(dtype: torch.dtype, channels: int) -> None:
    x = batch((64, channels, 12, 20), seed=8).to(dtype)
    before = x.clone()
    for out in (
        trivial_augment(x, generator=torch.Generator().manual_seed(0)),
        rand_augment(x, num_ops=3, magnitude=30, generator=torch.Generator().manual_seed(0)),
    ):
        assert out.shape == x.shape
        assert out.dtype == dtype
        assert not out.isnan().any()
        assert out.min() >= 0.0
        assert out.max() <= 1.0
    assert torch.equal(x, before)


def test_color_leaves_a_grayscale_image_as_it_is() -> None:
    x = batch((4, 1, 16, 16), seed=9)
    op = torch.full((4,), OP_NAMES.index("Color"))
    assert torch.equal(_apply_ops(x, op, torch.tensor([-0.99, -0.5, 0.3, 0.99])), x)


def test_sharpness_leaves_tiny_images_as_they_are() -> None:
    x = batch((2, 3, 2, 5), seed=10)
    op = torch.full((2,), OP_NAMES.index("Sharpness"))
    out = _apply_ops(x, op, torch.tensor([0.9, -0.9]))
    assert torch.equal(out, x)
    assert torch.equal(out[0], reference(x[0], "Sharpness", 0.9))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"magnitude": 31}, ValueError, "magnitude=31"),
        ({"magnitude": -1}, ValueError, "magnitude=-1"),
        ({"num_ops": -1}, ValueError, "num_ops=-1"),
    ],
)
def test_rand_augment_rejects_bad_arguments(
    kwargs: dict[str, int], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        rand_augment(torch.rand(2, 3, 8, 8), generator=torch.Generator(), **kwargs)


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.rand(3, 8, 8), ValueError, r"\(3, 8, 8\)"),
        (torch.rand(2, 2, 8, 8), ValueError, r"\(2, 2, 8, 8\)"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), TypeError, "torch.uint8"),
        (torch.empty(2, 3, 8, 8, device="meta"), ValueError, "generator on cpu"),
    ],
)
def test_augment_rejects_bad_images(x: torch.Tensor, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        trivial_augment(x, generator=torch.Generator())


@pytest.mark.gpu
def test_gpu_matches_cpu_without_host_sync() -> None:
    x = batch((28, 3, 12, 20), seed=11)
    op = torch.arange(len(OP_NAMES)).repeat(2)
    level = torch.randint(NUM_MAGNITUDE_BINS, op.shape, generator=torch.Generator().manual_seed(0))
    magnitude = _magnitude_table(wide=True, height=12, width=20, device="cpu")[op, level]
    gen = torch.Generator(device="cuda").manual_seed(0)
    xc, opc, magc = x.cuda(), op.cuda(), magnitude.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside the ops raises
    try:
        got = _apply_ops(xc, opc, magc)
        trivial_augment(xc, generator=gen)
        rand_augment(xc, num_ops=2, magnitude=9, generator=gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    want = _apply_ops(x, op, magnitude)
    for i, k in enumerate(op.tolist()):
        m = float(magnitude[i])
        why = mismatch(got[i].cpu(), want[i], OP_NAMES[k], m)
        assert why is None, f"image {i}, {OP_NAMES[k]} at {m}: {why}"
