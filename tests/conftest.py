from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

REFERENCES = sorted((ROOT / "configs" / "reference").glob("*.toml"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _quiet_threads() -> None:
    # Two cores here and in CI: keep torch from oversubscribing when pytest runs subprocesses.
    torch.set_num_threads(2)
