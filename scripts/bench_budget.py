"""How long the budget check costs per candidate, next to building the network to count it.

    python scripts/bench_budget.py

Prints microseconds per call for the closed-form count, the count with MACs, the
fit-to-budget scaling and a ``torch.device("meta")`` build, for each reference architecture.
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from space import Genotype, build, count, count_params, fit_to_budget

ROOT = Path(__file__).resolve().parent.parent


def per_call_us(fn: Callable[[], object], min_seconds: float = 0.2) -> float:
    """Best of three timings of ``fn``, in microseconds per call."""
    timer = timeit.Timer(fn)
    number = 1
    while timer.timeit(number) < min_seconds:
        number *= 2
    return min(timer.repeat(repeat=3, number=number)) / number * 1e6


def measure(g: Genotype) -> tuple[float, float, float, float]:
    def meta_build() -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in build(g, num_classes=10).parameters())

    return (
        per_call_us(lambda: count_params(g, num_classes=10)),
        per_call_us(lambda: count(g, num_classes=10, image_size=32)),
        per_call_us(lambda: fit_to_budget(g, 400_000, num_classes=10)),
        per_call_us(meta_build, min_seconds=0.5),
    )


def main(argv: Sequence[str] | None = None) -> int:
    torch.set_num_threads(1)
    print(
        f"{'architecture':>18} {'params':>11} {'count us':>9} {'+MACs us':>9} "
        f"{'fit 400k us':>12} {'meta build us':>14}"
    )
    for path in sorted((ROOT / "configs" / "reference").glob("*.toml")):
        g = Genotype.load(path)
        t_count, t_macs, t_fit, t_meta = measure(g)
        print(
            f"{path.stem:>18} {count_params(g, num_classes=10):>11,} {t_count:>9.1f} "
            f"{t_macs:>9.1f} {t_fit:>12.0f} {t_meta:>14.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
