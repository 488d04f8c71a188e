"""Rewrite a campaign result's README.md and pareto.png from the result's own files.

    python scripts/rewrite_result.py results/reference/gpu

For a result whose work folder (``results/campaigns/<name>/``) is not on this machine, where
``python -m search.campaign --summarize`` cannot run: a GPU run's result brought back from the
device, after a hand-written ``NOTES.md`` was added or where the device could not render the
PNG. It reads ``leaderboard.csv``, ``campaign.json`` (the command, machines, versions and
sessions as run), the preset as run (``campaign.toml``), the study databases and ``NOTES.md``
(``search.comparison.rewrite_result``); those are left as they are. Exit 0, or 2 on bad input.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from search.campaign.result import rewrite_result
from space._cli import ArgumentParser
from space.errors import UserError


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(
        prog="python scripts/rewrite_result.py",
        description="Rewrite a campaign result's README.md and pareto.png from its own files.",
    )
    p.add_argument("folders", nargs="+", type=Path, help="result folders (results/reference/X)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        for folder in args.folders:
            rows = rewrite_result(folder)
            print(f"rewrote {folder}/README.md ({len(rows)} models)")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
