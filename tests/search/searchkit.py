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
        # The stages after the trials have tests of their own (test_stages.py).
        *([] if "--race-top" in extra else ["--race-top", "0"]),
        *([] if "--recipe-trials" in extra else ["--recipe-trials", "0"]),
        *extra,
    ]


REFERENCE = """\
# a tiny reference network: one basic block of 16 channels, the standard recipe
stem_width = 8
[[stages]]
depth = 1
width = 16
[augment]
crop_padding = 4
flip = true
label_smoothing = 0.1
"""


def campaign_preset(tmp: Path, *, swap: bool = True, **tables: str) -> Path:
    """A campaign preset for tiny generated images; ``tables`` replaces whole tables."""
    if not (tmp / "data").exists():
        tiny_data(tmp / "data")
        tiny_space(tmp / "space.toml")
        (tmp / "ref.toml").write_text(REFERENCE)
    parts = {
        "campaign": f'device = "cpu"\nswap_recipes = {str(swap).lower()}',
        # The race and recipe stages have tests of their own (test_stages, test_campaign);
        # a joint search draws a recipe of its own, which the swapped recipes need.
        "search": (
            f'trials = 3\nspace = "{tmp / "space.toml"}"\nstartup_trials = 2\n'
            'race_top = 0\nrecipe_trials = 0\nrecipe = "joint"'
        ),
        "data": f'source = "{tmp / "data"}"\nval_size = 6',
        "train": "epochs = 2\nbatch_size = 8\nlr = 0.05\ntta_views = 1",
        "retrain": "top = 1\nseeds = 2\nepochs = 1\ntta_views = 1",
        **tables,
    }
    text = "".join(f"[{name}]\n{body}\n" for name, body in parts.items() if body is not None)
    if "[[budgets]]" not in text:
        text += f'[[budgets]]\nbudget = "20k"\nreferences = ["{tmp / "ref.toml"}"]\n'
    path = tmp / "tiny.toml"
    path.write_text(text)
    return path
