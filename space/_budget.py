"""Parameter budgets: parse them, count a genotype against one, and scale a genotype to fill one.

The counts are closed forms that walk the genotype the way ``space.builder`` builds it: no weight
is allocated, so a candidate is checked in microseconds and an over-budget one costs nothing.
Property tests hold ``count`` equal to ``sum(p.numel())`` of the built network and to forward
hooks' MACs. ``fit_to_budget`` can keep to a MACs limit beside the parameter budget.

The command line is ``python -m space.budget`` (``space/budget.py``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from space.blocks import inner_width, se_width
from space.errors import UserError
from space.genotype import MAX_WIDTH, Genotype

MAX_BUDGET = 10**10  # parameters; anything larger is a typo, not a budget

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
_BUDGET_RE = re.compile(r"^\s*([+-]?[0-9][0-9_]*(?:\.[0-9_]*)?(?:e[+-]?[0-9]+)?)\s*([kmg]?)\s*$")


class BudgetError(UserError, ValueError):
    """A budget that is not a positive whole number of parameters up to 1e10."""


def parse_budget(text: str | int | float) -> int:
    """``'400k'``, ``'400_000'``, ``'4e5'``, ``'5M'``, ``'5e6'``, ``'0.4M'`` -> parameter count."""
    if isinstance(text, bool):
        raise BudgetError(f"budget must be a number of parameters, but got {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = _BUDGET_RE.match(str(text).lower())
        if not match:
            raise BudgetError(
                f"budget must be a number of parameters such as 400k, 400_000, 4e5, 5M or 5e6, "
                f"but got {text!r}"
            )
        value = float(match.group(1).replace("_", "")) * _SUFFIX[match.group(2)]
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"budget must be a positive number of parameters, but got {text!r}")
    if value > MAX_BUDGET:
        raise BudgetError(f"budget must be at most 1e10 parameters, but got {text!r}")
    if value != round(value):
        raise BudgetError(f"budget must be a whole number of parameters, but got {text!r}")
    return round(value)


def format_count(n: float) -> str:
    """12_345 -> '12.3k', 4_990_000 -> '4.99M' (three significant digits)."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def _check_size(num_classes: int, in_channels: int, image_size: tuple[int, int]) -> None:
    for name, value, low in (
        ("num_classes", num_classes, 2),
        ("in_channels", in_channels, 1),
        ("image height", image_size[0], 1),
        ("image width", image_size[1], 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"{name} must be an integer >= {low}, but got {value!r}")


def _as_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)  # type: ignore[return-value]


def count(
    genotype: Genotype,
    *,
    num_classes: int,
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 32,
) -> tuple[int, int]:
    """(trainable parameters, multiply-accumulates) of the network ``build`` makes.

    MACs, for one image of ``image_size``: each convolution's weights times its output
    positions (k x k x c_in / groups per output value, so k x k for a depthwise conv), and each
    linear layer's weights. Squeeze-excitation's two 1x1 convs count (at 1x1, a few thousand at
    most); norms, activations, SE's pooling and gating, the layer scale, pooling, biases and
    additions are left out, as fvcore and most papers do.
    """
    h, w = _as_hw(image_size)
    _check_size(num_classes, in_channels, (h, w))
    g = genotype
    params = 0
    macs = 0

    def conv(
        c_in: int, c_out: int, k: int, stride: int, bias: bool = False, groups: int = 1
    ) -> None:
        # Convolutions here pad k // 2 (a 2x2 patch conv pads odd sides by one), so the output
        # side is ceil(side / stride).
        nonlocal params, macs, h, w
        h, w = -(-h // stride), -(-w // stride)
        weights = k * k * (c_in // groups) * c_out
        params += weights + (c_out if bias else 0)
        macs += weights * h * w

    def norm(c: int) -> None:  # BatchNorm or LayerNorm: a scale and a shift per channel
        nonlocal params
        params += 2 * c

    def se(c: int, width: int, ratio: float) -> None:
        # Global mean (N, c, 1, 1), 1x1 conv c -> r with bias, act, 1x1 conv r -> c with bias.
        nonlocal params, macs
        if ratio:
            r = se_width(width, ratio)
            params += 2 * c * r + r + c
            macs += 2 * c * r

    conv(in_channels, g.stem_width, 3, 1, bias=g.stem_bias)
    norm(g.stem_width)
    c = g.stem_width
    for stage in g.stages:
        stride = 1
        if stage.downsample:
            if g.downsample == "stride":
                stride = 2
            elif g.downsample == "conv":
                conv(c, stage.width, 3, 2)
                norm(stage.width)
                c = stage.width
            elif g.downsample == "patch":
                norm(c)
                conv(c, stage.width, 2, 2, bias=True)
                c = stage.width
            else:  # max- or avg-pool with ceil_mode: every side rounds up
                h, w = -(-h // 2), -(-w // 2)
        k = stage.kernel
        for i in range(stage.depth):
            s = stride if i == 0 else 1
            c_out = stage.width
            h_in, w_in = h, w
            if stage.block == "basic":
                conv(c, c_out, k, s)
                norm(c_out)
                conv(c_out, c_out, k, 1)
                norm(c_out)
                se(c_out, c_out, stage.se)
            elif stage.block == "preact":
                norm(c)
                conv(c, c_out, k, s)
                norm(c_out)
                conv(c_out, c_out, k, 1)
                se(c_out, c_out, stage.se)
            elif stage.block == "bottleneck":
                mid = inner_width(c_out, stage.expansion)
                conv(c, mid, 1, 1)
                norm(mid)
                conv(mid, mid, k, s)
                norm(mid)
                conv(mid, c_out, 1, 1)
                norm(c_out)
                se(c_out, c_out, stage.se)
            elif stage.block == "mbconv":
                hidden = c * stage.expansion
                if stage.expansion > 1:
                    conv(c, hidden, 1, 1)
                    norm(hidden)
                conv(hidden, hidden, k, s, groups=hidden)
                norm(hidden)
                se(hidden, c_out, stage.se)
                conv(hidden, c_out, 1, 1)
                norm(c_out)
            else:  # convnext
                hidden = c_out * stage.expansion
                conv(c, c, k, s, groups=c)
                norm(c)
                conv(c, hidden, 1, 1, bias=True)
                conv(hidden, c_out, 1, 1, bias=True)
                se(c_out, c_out, stage.se)
                params += c_out  # layer scale
            if s != 1 or c != c_out:  # projection shortcut, at the block's output resolution
                h_out, w_out = h, w
                h, w = h_in, w_in
                if g.shortcut == "avgpool_conv_bn":
                    h, w = -(-h // s), -(-w // s)  # the pool does the striding
                    conv(c, c_out, 1, 1)
                else:
                    conv(c, c_out, 1, s)
                if g.shortcut != "conv":
                    norm(c_out)
                assert (h, w) == (h_out, w_out)
            c = c_out
    if g.stages[-1].block in ("preact", "convnext"):  # the closing norm (builder.closing_layers)
        norm(c)
    features = 2 * c if g.pool == "avgmax" else c
    params += features * num_classes + num_classes  # linear or 1x1 conv head, with bias
    macs += features * num_classes
    return params, macs


def count_params(genotype: Genotype, *, num_classes: int, in_channels: int = 3) -> int:
    """Exact number of trainable parameters of ``build(genotype, ...)``, without building it."""
    return count(genotype, num_classes=num_classes, in_channels=in_channels, image_size=1)[0]


def count_macs(
    genotype: Genotype,
    *,
    num_classes: int,
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 32,
) -> int:
    """Multiply-accumulates of one forward pass on one image (see ``count``)."""
    return count(genotype, num_classes=num_classes, in_channels=in_channels, image_size=image_size)[
        1
    ]


@dataclass(frozen=True)
class BudgetCheck:
    """The verdict of a genotype against a budget."""

    params: int
    budget: int

    @property
    def fits(self) -> bool:
        return self.params <= self.budget

    @property
    def excess(self) -> int:
        """Parameters over the budget (0 when it fits)."""
        return max(0, self.params - self.budget)

    @property
    def fraction(self) -> float:
        """Share of the budget used; above 1 when over."""
        return self.params / self.budget

    def message(self) -> str:
        if self.fits:
            return (
                f"fits: {self.params:,} parameters <= budget {self.budget:,} "
                f"({self.fraction:.1%} used)"
            )
        return (
            f"over budget: {self.params:,} parameters > budget {self.budget:,} "
            f"by {self.excess:,} ({self.fraction - 1:.1%} over)"
        )


def check(
    genotype: Genotype, budget: int, *, num_classes: int, in_channels: int = 3
) -> BudgetCheck:
    """Count ``genotype`` against ``budget`` (no weights are allocated)."""
    return BudgetCheck(
        count_params(genotype, num_classes=num_classes, in_channels=in_channels), budget
    )


def scale_widths(genotype: Genotype, multiplier: float, *, multiple: int = 8) -> Genotype:
    """Every width (stem and stages) times ``multiplier``, rounded to ``multiple``, at least
    ``multiple`` and at most the genotype's limit. Rounding keeps the result monotone in
    ``multiplier``; the parameter count need not be (see ``fit_to_budget``)."""

    def scaled(width: int) -> int:
        w = round(width * multiplier / multiple) * multiple
        return min(max(multiple, w), MAX_WIDTH // multiple * multiple)

    return dataclasses.replace(
        genotype,
        stem_width=scaled(genotype.stem_width),
        stages=tuple(dataclasses.replace(s, width=scaled(s.width)) for s in genotype.stages),
    )


def fit_to_budget(
    genotype: Genotype,
    budget: int,
    *,
    num_classes: int,
    in_channels: int = 3,
    multiple: int = 8,
    max_macs: int | None = None,
    image_size: int | tuple[int, int] = 32,
) -> Genotype | None:
    """The genotype with its widths scaled to fill ``budget`` as closely as possible.

    First the single multiplier of all widths (stem and stages) with the largest count that still
    fits; then, since rounding to ``multiple`` channels leaves part of the budget unused, each
    stage (last first, then the stem) is widened by one more multiple where the count grows and
    still fits. Depths, blocks and every other choice are kept. With ``max_macs``, "fits" also
    means at most ``max_macs`` multiply-accumulates on an ``image_size`` image: the result is
    the largest count that keeps within both limits. Returns None when even the narrowest
    version (every width ``multiple``) is over either limit. Pure; a few hundred closed-form
    counts at most.
    """

    def measure(g: Genotype) -> tuple[int, int]:
        if max_macs is None:
            return count_params(g, num_classes=num_classes, in_channels=in_channels), 0
        return count(g, num_classes=num_classes, in_channels=in_channels, image_size=image_size)

    macs_limit = 0 if max_macs is None else max_macs  # without one, every MACs "count" is 0

    def scaled(m: float) -> Genotype:
        return scale_widths(genotype, m, multiple=multiple)

    best = scaled(0.0)
    best_params, macs = measure(best)
    if best_params > budget or macs > macs_limit:
        return None
    # Counts are not monotone in the multiplier: when rounding makes two neighbouring widths
    # equal, a projection shortcut turns into an identity and the count drops. So walk every
    # multiplier at which some rounded width changes, smallest first, and keep the largest count
    # that fits. A vanishing projection takes at most about three quarters of a count with it
    # (a projection costs c_in x c_out where its block costs at least (2 / e + 9 / e^2) c_out^2
    # for a bottleneck of expansion e <= 8 and c_in ~ c_out, the case where rounding makes them
    # equal; and the same share of MACs, at the same resolution), so once a count passes four
    # times its limit no larger multiplier can fit again.
    for m in _width_steps(genotype, multiple):
        candidate = scaled(m)
        n, macs = measure(candidate)
        if n > 4 * budget or macs > 4 * macs_limit:
            break
        if best_params < n <= budget and macs <= macs_limit:
            best, best_params = candidate, n
    for i in reversed(range(-1, len(best.stages))):  # last stage first; -1 is the stem
        candidate = _widen(best, i, multiple)
        if candidate is None:
            continue
        n, macs = measure(candidate)
        if best_params < n <= budget and macs <= macs_limit:
            best, best_params = candidate, n
    return best


def _width_steps(genotype: Genotype, multiple: int) -> list[float]:
    """Every multiplier, ascending, just past which ``scale_widths`` changes some width."""
    widths = {genotype.stem_width, *(s.width for s in genotype.stages)}
    steps = {
        (k + 0.5) * multiple / w * (1 + 1e-9)  # just past the rounding point k + 0.5
        for w in widths
        for k in range(1, MAX_WIDTH // multiple)
    }
    return sorted(steps)


def _widen(genotype: Genotype, index: int, multiple: int) -> Genotype | None:
    """``genotype`` with stage ``index`` (-1: the stem) ``multiple`` wider; None past the cap."""
    if index < 0:
        width = genotype.stem_width + multiple
        return None if width > MAX_WIDTH else dataclasses.replace(genotype, stem_width=width)
    stage = genotype.stages[index]
    if stage.width + multiple > MAX_WIDTH:
        return None
    stages = list(genotype.stages)
    stages[index] = dataclasses.replace(stage, width=stage.width + multiple)
    return dataclasses.replace(genotype, stages=tuple(stages))
