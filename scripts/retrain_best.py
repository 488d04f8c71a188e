"""Retrain the best trials of a study at full length (same as ``python -m search.retrain``).

    python scripts/retrain_best.py --storage sqlite:///results/cifar10-400k.db \\
        --study-name cifar10-400k --top 3 --arch configs/reference/resnet20.toml
"""

from __future__ import annotations

import sys

from search.retrain import main

if __name__ == "__main__":
    sys.exit(main())
