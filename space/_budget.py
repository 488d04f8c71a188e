"""Parameter budgets: parse them, count a genotype against one, and scale a genotype to fill one.

The counts are closed forms that walk the genotype the way ``space.builder`` builds it: no weight
is allocated, so a candidate is checked in microseconds and an over-budget one costs nothing.
A property test holds ``count_params`` equal to ``sum(p.numel())`` of the built network.

The command line is ``python -m space.budget`` (``space/budget.py``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from space.builder import inner_width
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

    MACs count convolutions and linear layers for one image of ``image_size`` (BN, activations,
    pooling and additions are left out, as fvcore and most papers do).
    """
    h, w = _as_hw(image_size)
    _check_size(num_classes, in_channels, (h, w))
    g = genotype
    params = 0
    macs = 0

    def conv(c_in: int, c_out: int, k: int, stride: int, bias: bool = False) -> None:
        # Convolutions here pad k // 2, so the output side is ceil(side / stride).
        nonlocal params, macs, h, w
        h, w = -(-h // stride), -(-w // stride)
        params += k * k * c_in * c_out + (c_out if bias else 0)
        macs += k * k * c_in * c_out * h * w

    def bn(c: int) -> None:
        nonlocal params
        params += 2 * c

    conv(in_channels, g.stem_width, 3, 1, bias=g.stem_bias)
    bn(g.stem_width)
    c = g.stem_width
    for stage in g.stages:
        stride = 1
        if stage.downsample:
            if g.downsample == "stride":
                stride = 2
            elif g.downsample == "conv":
                conv(c, stage.width, 3, 2)
                bn(stage.width)
                c = stage.width
            else:  # max- or avg-pool with ceil_mode: every side rounds up
                h, w = -(-h // 2), -(-w // 2)
        for i in range(stage.depth):
            s = stride if i == 0 else 1
            c_out = stage.width
            h_in, w_in = h, w
            if stage.block == "basic":
                conv(c, c_out, 3, s)
                bn(c_out)
                conv(c_out, c_out, 3, 1)
                bn(c_out)
            elif stage.block == "preact":
                bn(c)
                conv(c, c_out, 3, s)
                bn(c_out)
                conv(c_out, c_out, 3, 1)
            else:  # bottleneck
                mid = inner_width(c_out)
                conv(c, mid, 1, 1)
                bn(mid)
                conv(mid, mid, 3, s)
                bn(mid)
                conv(mid, c_out, 1, 1)
                bn(c_out)
            if s != 1 or c != c_out:  # projection shortcut, at the block's output resolution
                h_out, w_out = h, w
                h, w = h_in, w_in
                if g.shortcut == "avgpool_conv_bn":
                    h, w = -(-h // s), -(-w // s)  # the pool does the striding
                    conv(c, c_out, 1, 1)
                else:
                    conv(c, c_out, 1, s)
                if g.shortcut != "conv":
                    bn(c_out)
                assert (h, w) == (h_out, w_out)
            c = c_out
    if g.stages[-1].block == "preact":
        bn(c)
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
) -> Genotype | None:
    """The genotype with its widths scaled to fill ``budget`` as closely as possible.

    First the single multiplier of all widths (stem and stages) with the largest count that still
    fits; then, since rounding to ``multiple`` channels leaves part of the budget unused, each
    stage (last first, then the stem) is widened by one more multiple where the count grows and
    still fits. Depths, blocks and every other choice are kept. Returns None when even the
    narrowest version (every width ``multiple``) is over budget. Pure; a few hundred closed-form
    counts at most.
    """

    def params(g: Genotype) -> int:
        return count_params(g, num_classes=num_classes, in_channels=in_channels)

    def scaled(m: float) -> Genotype:
        return scale_widths(genotype, m, multiple=multiple)

    best = scaled(0.0)
    if params(best) > budget:
        return None
    # Counts are not monotone in the multiplier: when rounding makes two neighbouring widths
    # equal, a projection shortcut turns into an identity and the count drops. So walk every
    # multiplier at which some rounded width changes, smallest first, and keep the largest count
    # that fits. Dropping projections can at most halve a count (a bottleneck block's projection
    # is about the size of the block), so once a count passes four times the budget no larger
    # multiplier can fit again.
    best_params = params(best)
    for m in _width_steps(genotype, multiple):
        candidate = scaled(m)
        n = params(candidate)
        if n > 4 * budget:
            break
        if best_params < n <= budget:
            best, best_params = candidate, n
    for i in reversed(range(-1, len(best.stages))):  # last stage first; -1 is the stem
        candidate = _widen(best, i, multiple)
        if candidate is not None and best_params < (n := params(candidate)) <= budget:
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
