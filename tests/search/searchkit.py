"""Shared pieces of the search tests: a tiny space, tiny data and a command line for them."""

from __future__ import annotations

from pathlib import Path

import tomli_w

from space._toml import load_toml
from tests.conftest import ROOT
from tests.images import make_image_folder


def tiny_space(path: Path, **overrides: object) -> Path:
    """The default preset cut down so that a trial trains in a fraction of a second."""
    raw = load_toml(ROOT / "configs" / "space" / "default.toml")
    raw["params"].update(
        num_stages=[1, 2],
        depth=[1],
        block=["basic", "preact"],
        auto_augment=["none"],
        budget_fill={"low": 0.5, "high": 1.0},
    )
    for key, value in overrides.items():
        if key in ("fit_to_budget", "width_multiple"):
            raw[key] = value
        else:
            raw["params"][key] = value
    path.write_text(tomli_w.dumps(raw))
    return path


def tiny_data(root: Path) -> Path:
    return make_image_folder(root, train_per_class=10, test_per_class=2, size=8)


def search_args(tmp: Path, *extra: str, trials: int = 4) -> list[str]:
    space = tmp / "space.toml"
    if not space.exists():
        tiny_space(space)
    data = tmp / "data"
    if not data.exists():
        tiny_data(data)
    return [
        "--budget",
        "20k",
        "--trials",
        str(trials),
        "--epochs",
        "2",
        "--data",
        str(data),
        "--space",
        str(space),
        "--val-size",
        "6",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--no-progress",
        "--study-name",
        "tiny",
        *extra,
    ]
