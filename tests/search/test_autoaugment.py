"""Batched RandAugment / TrivialAugment-Wide against torchvision v2, image by image.

The reference is torchvision's own per-op dispatch (``_apply_image_or_video_transform`` of the v2
auto-augment classes, which calls ``v2.functional.affine``/``rotate``/``adjust_*``/...), fed
the magnitudes from torchvision's own ``_AUGMENTATION_SPACE`` tables. Each image's op, bin and
sign are read from the augmenter's own draw function (``_draw``), replayed on an identically
seeded generator; their distribution is checked against torchvision's policies.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.transforms import v2
from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix

from search.autoaugment import (
    NUM_MAGNITUDE_BINS,
    OP_NAMES,
    _augment,
    _draw,
    _Draws,
    _magnitude_table,
    _tables,
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


@functools.cache  # one per (op, magnitude, size); callers only read it
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


Draw = tuple[str, int, int]  # one image's op name, bin (0..30) and sign (+1 or -1; +1 if unsigned)


def decode(draws: _Draws, batch: int) -> list[Draw]:
    """Each image's (op, bin, sign) from one round's draws, by ``_Draws``'s documented layout."""
    num_ops, per_op = draws.choice.shape
    assert num_ops == len(OP_NAMES)
    assert sorted(draws.image.tolist()) == list(range(num_ops * per_op)), "not a permutation"
    plan: list[Draw | None] = [None] * batch
    choice = draws.choice.flatten().tolist()
    for slot, (i, j) in enumerate(zip(draws.image.tolist(), choice, strict=True)):
        if i < batch:
            name = OP_NAMES[slot // per_op]
            plan[i] = (name, j // 2, -1 if j % 2 and name in SIGNED else 1)
    assert None not in plan
    return plan  # type: ignore[return-value]


def deal(plan: list[Draw]) -> _Draws:
    """Draws that give image i the op, bin and sign ``plan[i]``: the inverse of ``decode``."""
    per_op = max(Counter(name for name, _, _ in plan).values())
    image = torch.full((len(OP_NAMES) * per_op,), -1)
    choice = torch.zeros(len(OP_NAMES), per_op, dtype=torch.int64)
    used: Counter[int] = Counter()
    for i, (name, level, sign) in enumerate(plan):
        k = OP_NAMES.index(name)
        image[k * per_op + used[k]] = i
        choice[k, used[k]] = 2 * level + (sign < 0)
        used[k] += 1
    padding = image < 0
    image[padding] = torch.arange(len(plan), len(plan) + int(padding.sum()))
    return _Draws(image=image, choice=choice)


def apply(x: torch.Tensor, plan: list[Draw], transform: v2.Transform) -> torch.Tensor:
    """One round of the augmenter with image i given ``plan[i]`` (bins of ``transform``)."""
    tables = _tables(transform is WIDE, *x.shape[1:], x.device, x.dtype)
    return _augment(x, deal(plan), tables)


def check_images(
    got: torch.Tensor, x: torch.Tensor, plan: list[Draw], transform: v2.Transform
) -> None:
    """Every ``got[i]`` is torchvision's op ``plan[i]`` applied to ``x[i]`` alone."""
    height, width = x.shape[-2:]
    for i, (name, level, sign) in enumerate(plan):
        m = sign * tv_magnitude(transform, name, level, height, width)
        why = mismatch(got[i], reference(x[i], name, m), name, m)
        assert why is None, f"image {i}: {name} at bin {level}, sign {sign} ({m:g}): {why}"


# 32x32: Equalize's rounding term (step // 2) is 0 below 510 pixels per channel.
@pytest.mark.parametrize("shape", [(4, 3, 16, 16), (3, 3, 12, 20), (2, 1, 16, 16), (2, 3, 32, 32)])
@pytest.mark.parametrize("name", OP_NAMES)
def test_each_op_matches_torchvision(name: str, shape: tuple[int, int, int, int]) -> None:
    x = batch(shape, seed=OP_NAMES.index(name))
    for transform, level, sign in signed_levels(name):
        plan = [(name, level, sign)] * shape[0]
        check_images(apply(x, plan, transform), x, plan, transform)


def test_each_image_gets_its_own_op_and_magnitude() -> None:
    # Every op twice in one non-square batch, in shuffled order, each image at its own bin/sign.
    gen = torch.Generator().manual_seed(1)
    order = torch.randperm(2 * len(OP_NAMES), generator=gen).tolist()
    level = torch.randint(NUM_MAGNITUDE_BINS, (len(order),), generator=gen).tolist()
    flip = (torch.rand(len(order), generator=gen) < 0.5).tolist()
    plan = [
        (OP_NAMES[k % len(OP_NAMES)], lv, -1 if f and OP_NAMES[k % len(OP_NAMES)] in SIGNED else 1)
        for k, lv, f in zip(order, level, flip, strict=True)
    ]
    x = batch((len(plan), 3, 12, 20), seed=2)
    check_images(apply(x, plan, WIDE), x, plan, WIDE)


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


def policy(transform: v2.Transform, name: str, height: int, width: int) -> dict[float, float]:
    """P(magnitude | op) as torchvision's ``forward`` draws it: TrivialAugmentWide a uniform bin,
    RandAugment its fixed ``magnitude`` bin; the sign flips with probability 1/2 if signed; an
    op without magnitudes gets 0."""
    magnitudes_fn, signed = transform._AUGMENTATION_SPACE[name]
    magnitudes = magnitudes_fn(NUM_MAGNITUDE_BINS, height, width)
    if magnitudes is None:
        return {0.0: 1.0}
    levels = range(NUM_MAGNITUDE_BINS) if transform is WIDE else [transform.magnitude]
    probability: Counter[float] = Counter()
    for level in levels:
        for sign in (1.0, -1.0) if signed else (1.0,):
            probability[sign * float(magnitudes[level])] += 1.0 / len(levels) / (1 + signed)
    return dict(probability)


@pytest.mark.parametrize("transform", [WIDE, v2.RandAugment(magnitude=9)], ids=["wide", "rand"])
def test_draws_follow_torchvisions_policy(transform: v2.Transform) -> None:
    # The augmenter's draws for 20,000 images against torchvision's policy: op frequencies and,
    # per op, the frequency of every signed magnitude, each within 5 binomial standard errors.
    n, height, width = 20_000, 12, 20
    level = None if transform is WIDE else transform.magnitude
    draws = _draw(n, level=level, generator=torch.Generator().manual_seed(0), device="cpu")
    plan = decode(draws, n)
    per_op: dict[str, Counter[float]] = {name: Counter() for name in transform._AUGMENTATION_SPACE}
    for name, lv, sign in plan:
        per_op[name][sign * tv_magnitude(transform, name, lv, height, width)] += 1

    def within(count: int, trials: int, p: float) -> bool:
        return abs(count - trials * p) <= 5 * math.sqrt(trials * p * (1 - p))

    p_op = 1 / len(transform._AUGMENTATION_SPACE)
    # Whatever its place in the batch, an image's op is uniform: 10 blocks of 2,000 images.
    for start in range(0, n, n // 10):
        block = Counter(name for name, _, _ in plan[start : start + n // 10])
        for name in per_op:
            assert within(block[name], n // 10, p_op), f"{name}: {block[name]} at {start}"
    for name, seen in per_op.items():
        drawn = sum(seen.values())
        assert within(drawn, n, p_op), f"{name} drawn {drawn} times in {n}"
        want = policy(transform, name, height, width)
        assert set(seen) <= set(want), f"{name}: magnitudes {set(seen) - set(want)}"
        for magnitude, p in want.items():
            count = seen[magnitude]
            assert within(count, drawn, p), f"{name} at {magnitude}: {count} of {drawn}"


# Batch sizes below, at and above one slot per op, not multiples of 14, and a chunk of thousands.
AUGMENT_CASES = [(1, 12, 20), (5, 12, 20), (14, 16, 16), (27, 12, 20), (8192, 8, 8)]


@pytest.mark.parametrize(("n", "height", "width"), AUGMENT_CASES)
def test_trivial_augment_is_torchvisions_op_at_each_draw(n: int, height: int, width: int) -> None:
    x = batch((n, 3, height, width), seed=n)
    out = trivial_augment(x, generator=torch.Generator().manual_seed(n))
    draws = _draw(n, level=None, generator=torch.Generator().manual_seed(n), device="cpu")
    check_images(out, x, decode(draws, n), WIDE)


@pytest.mark.parametrize(("n", "height", "width"), AUGMENT_CASES)
def test_rand_augment_is_torchvisions_ops_at_each_draw(n: int, height: int, width: int) -> None:
    # Two rounds, each checked on its own input: round 2 starts from round 1's output (with
    # num_ops=1 and the same seed), as a geometric tie in round 1 would spread in round 2.
    x = batch((n, 3, height, width), seed=n)
    once = rand_augment(x, num_ops=1, magnitude=9, generator=torch.Generator().manual_seed(n))
    twice = rand_augment(x, num_ops=2, magnitude=9, generator=torch.Generator().manual_seed(n))
    gen = torch.Generator().manual_seed(n)
    first, second = (_draw(n, level=9, generator=gen, device="cpu") for _ in range(2))
    check_images(once, x, decode(first, n), RAND)
    check_images(twice, once, decode(second, n), RAND)


class _Recorder(TorchDispatchMode):
    """Records each dispatched op with its output shapes, and fails on data-dependent ones."""

    # Each of these reads values on the host or sizes its output by them: a sync on CUDA.
    FORBIDDEN = ("nonzero", "masked_select", "_local_scalar_dense", "unique", "bincount")

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[tuple[int, ...]]]] = []

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        name = str(func)
        assert not any(word in name for word in self.FORBIDDEN), name
        if name.startswith(("aten.index.", "aten.index_put")):  # no boolean-mask indexing
            indices = args[1]
            assert all(i is None or i.dtype != torch.bool for i in indices), name
        out = func(*args, **(kwargs or {}))
        outputs = out if isinstance(out, (tuple, list)) else [out]
        shapes = [tuple(t.shape) for t in outputs if isinstance(t, torch.Tensor)]
        self.calls.append((name, shapes))
        return out


# Issue 14's budget: a training batch (crop, flip, auto-augment, cutout, cutmix) in at most 80
# ATen ops, with the auto-augmentation run once per chunk of ~16 batches.
MAX_TRIVIAL_OPS = 120
MAX_RAND_OPS_PER_ROUND = 100


@pytest.mark.parametrize("augment", ["trivial", "rand"])
def test_same_ops_whatever_the_draws(augment: str) -> None:
    # What a CUDA graph needs: the op sequence and every shape are fixed by the batch size; no
    # op waits for values (no nonzero, .item(), boolean masks). So two seeds give the same calls.
    def run(x: torch.Tensor, seed: int) -> list[tuple[str, list[tuple[int, ...]]]]:
        gen = torch.Generator().manual_seed(seed)
        with _Recorder() as recorder:
            if augment == "rand":
                rand_augment(x, num_ops=2, magnitude=9, generator=gen)
            else:
                trivial_augment(x, generator=gen)
        return recorder.calls

    x = batch((27, 3, 12, 20), seed=12)
    run(x, seed=0)  # builds and keeps the tables
    calls = run(x, seed=1)
    assert calls == run(x, seed=2)
    assert len(calls) == len(run(batch((5, 3, 12, 20), seed=13), seed=1))
    budget = MAX_TRIVIAL_OPS if augment == "trivial" else 2 * MAX_RAND_OPS_PER_ROUND
    assert len(calls) <= budget


def test_work_is_proportional_to_the_images() -> None:
    # Each op transforms only its own slots: the geometric ops resample 5 of 14 groups, Sharpness
    # convolves 1, Equalize histograms 1 (m = ceil(B / 14) images each).
    n = 140
    seen: dict[str, list[tuple[int, ...]]] = {}

    class Shapes(TorchDispatchMode):
        def __torch_dispatch__(
            self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
        ) -> Any:
            if isinstance(args[0], torch.Tensor):
                seen.setdefault(str(func), []).append(tuple(args[0].shape))
            return func(*args, **(kwargs or {}))

    x = batch((n, 3, 8, 8), seed=14)
    trivial_augment(x, generator=torch.Generator().manual_seed(0))
    with Shapes():
        trivial_augment(x, generator=torch.Generator().manual_seed(0))
    assert seen["aten.grid_sampler_2d.default"] == [(5 * n // 14, 3, 8, 8)]
    assert seen["aten.convolution.default"] == [(n // 14, 3, 8, 8)]
    assert seen["aten.scatter_add_.default"] == [(n // 14 * 3, 256)]


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


def test_empty_batch_gives_an_empty_batch() -> None:
    x = torch.rand(0, 3, 8, 8)
    assert trivial_augment(x, generator=torch.Generator()).shape == x.shape
    assert rand_augment(x, generator=torch.Generator()).shape == x.shape


def test_color_leaves_a_grayscale_image_as_it_is() -> None:
    x = batch((4, 1, 16, 16), seed=9)
    plan = [("Color", 30, -1), ("Color", 15, -1), ("Color", 9, 1), ("Color", 30, 1)]
    assert torch.equal(apply(x, plan, WIDE), x)


def test_sharpness_leaves_tiny_images_as_they_are() -> None:
    x = batch((2, 3, 2, 5), seed=10)
    out = apply(x, [("Sharpness", 30, 1), ("Sharpness", 30, -1)], RAND)
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
    gen = torch.Generator().manual_seed(0)
    plan = [
        (name, int(torch.randint(NUM_MAGNITUDE_BINS, (), generator=gen)), sign)
        for name in OP_NAMES
        for sign in (1, -1 if name in SIGNED else 1)
    ]
    x = batch((len(plan), 3, 12, 20), seed=11)
    xc, gen = x.cuda(), torch.Generator(device="cuda").manual_seed(0)
    trivial_augment(xc, generator=gen)  # builds the tables outside the checked region
    rand_augment(xc, generator=gen)
    apply(xc, plan, WIDE)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside the ops raises
    try:
        got = apply(xc, plan, WIDE)
        trivial_augment(xc, generator=gen)
        rand_augment(xc, num_ops=2, magnitude=9, generator=gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    check_images(got.cpu(), x, plan, WIDE)


@pytest.mark.gpu
def test_captured_in_a_cuda_graph() -> None:
    # Drawing and augmenting inside one CUDA graph: each replay draws afresh from the generator,
    # and each replay's output is torchvision's op at that replay's draws.
    x = batch((27, 3, 12, 20), seed=15).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    tables = _tables(True, *x.shape[1:], x.device, x.dtype)
    trivial_augment(x, generator=gen)  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(gen)
    with torch.cuda.graph(graph):
        draws = _draw(x.shape[0], level=None, generator=gen, device=x.device)
        out = _augment(x, draws, tables)
    results = []
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        plan = decode(_Draws(draws.image.cpu(), draws.choice.cpu()), x.shape[0])
        check_images(out.cpu(), x.cpu(), plan, WIDE)
        results.append(out.cpu())
    assert not torch.equal(results[0], results[1])
