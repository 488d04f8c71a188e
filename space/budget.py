"""Check architecture files against a parameter budget.

    python -m space.budget configs/reference/resnet20.toml --budget 400k

prints the count, the MACs and the verdict for each file; exit 0 when all fit, 1 when one is
over budget, 2 on bad input (one line on stderr).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from space._budget import BudgetCheck, count, format_count, parse_budget
from space._cli import ArgumentParser
from space.errors import UserError
from space.genotype import Genotype


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m space.budget",
        description=(
            "Count the parameters and MACs of architecture files and check them against a "
            "budget. Exit 0: all fit; 1: some are over budget; 2: bad input."
        ),
    )
    parser.add_argument("files", nargs="+", type=Path, help="architecture TOML files")
    parser.add_argument(
        "--budget", required=True, help="parameter budget: 400k, 400_000, 4e5, 5M, 5e6 ..."
    )
    parser.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    parser.add_argument(
        "--image-size", type=int, default=32, help="input side in pixels, for MACs (default 32)"
    )
    parser.add_argument("--in-channels", type=int, default=3, help="input channels (default 3)")
    args = parser.parse_args(argv)
    try:
        budget = parse_budget(args.budget)
        rows = []
        for path in args.files:
            genotype = Genotype.load(path)
            params, macs = count(
                genotype,
                num_classes=args.classes,
                in_channels=args.in_channels,
                image_size=args.image_size,
            )
            rows.append((path, genotype, params, macs))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    all_fit = True
    for path, genotype, params, macs in rows:
        verdict = BudgetCheck(params, budget)
        all_fit &= verdict.fits
        print(f"{path}")
        print(f"  key     {genotype.key()}")
        print(f"  params  {params:,} ({format_count(params)})")
        print(f"  MACs    {macs:,} ({format_count(macs)}) at {args.image_size}x{args.image_size}")
        print(f"  {verdict.message()}")
    return 0 if all_fit else 1


if __name__ == "__main__":
    sys.exit(main())
