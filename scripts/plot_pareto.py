"""Pareto plots, tables and dashboard records of one or several studies: ``search.report``.

    python scripts/plot_pareto.py --storage sqlite:///results/cifar10-400k.db \\
        --storage sqlite:///results/cifar10-5m.db

Takes the same flags (``--help`` lists them).
"""

from __future__ import annotations

import sys

from search.report import main

if __name__ == "__main__":
    sys.exit(main())
