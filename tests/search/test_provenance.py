"""What a result records about where it was made: paths relative to the project root, the command
as typed, and a recorded relative path found again from another working directory."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

import optuna
import pytest

from search import provenance
from search.run import main as run_main
from tests.conftest import ROOT
from tests.search.searchkit import search_args


def test_the_root_is_the_folder_holding_pyproject() -> None:
    assert provenance.ROOT == ROOT
    assert (provenance.ROOT / "pyproject.toml").is_file()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (ROOT / "data" / "cifar10-jpeg", "data/cifar10-jpeg"),
        (f"{ROOT}/results/campaigns/gpu/", "results/campaigns/gpu"),
        (f"{ROOT}/configs/../data/x", "data/x"),
        (ROOT, "."),
        ("data/cifar10-jpeg", "data/cifar10-jpeg"),  # relative: as it is
        ("cifar10", "cifar10"),
        ("/elsewhere/data", "/elsewhere/data"),  # outside the root: as it is
        (f"{ROOT}-other/data", f"{ROOT}-other/data"),  # a sibling that shares the prefix
    ],
)
def test_portable_path(path: str | Path, expected: str) -> None:
    assert provenance.portable_path(path) == expected


def test_portable_text_rewrites_every_path_under_a_prefix_and_nothing_else() -> None:
    text = json.dumps(
        {
            "source": f"{ROOT}/data/cifar10-jpeg",
            "artifact_dir": "/runs/x/results/campaigns/a/artifacts",
            "root": str(ROOT),
            "sibling": f"{ROOT}2/data",
            "nested": f"/mnt{ROOT}/data",
            "command": f"python {ROOT}/search/campaign.py --results /runs/x/results",
        }
    )
    out = json.loads(provenance.portable_text(text, {str(ROOT): "", "/runs/x/results": "results"}))
    assert out == {
        "source": "data/cifar10-jpeg",
        "artifact_dir": "results/campaigns/a/artifacts",
        "root": ".",
        "sibling": f"{ROOT}2/data",
        "nested": f"/mnt{ROOT}/data",
        "command": "python search/campaign.py --results results",
    }
    # Rewritten text has nothing left to rewrite.
    again = provenance.portable_text(json.dumps(out), {str(ROOT): "", "/runs/x/results": ""})
    assert json.loads(again) == out


def test_the_command_line_is_recorded_as_typed_from_the_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `python -m search.campaign` leaves the module's full path in sys.argv[0].
    argv = [
        str(ROOT / "search" / "campaign.py"),
        "--config",
        str(ROOT / "configs" / "campaign" / "gpu.toml"),
        f"--results={ROOT}/results",
        "--storage",
        f"sqlite:///{ROOT}/results/a.db",
        "--out",
        "/elsewhere/out",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    assert provenance.command_line().split()[1:] == [
        "-m",
        "search.campaign",
        "--config",
        "configs/campaign/gpu.toml",
        "--results=results",
        "--storage",
        "sqlite:///results/a.db",
        "--out",
        "/elsewhere/out",
    ]
    monkeypatch.setattr(sys, "argv", [str(ROOT / "scripts" / "bench_train.py"), "--device", "cuda"])
    assert provenance.command_line().split()[1:] == ["scripts/bench_train.py", "--device", "cuda"]
    monkeypatch.setattr(sys, "argv", [str(ROOT / "search" / "run.py"), "--storage", "x://u:pw@h/d"])
    assert "pw" not in provenance.command_line()  # a password is still redacted


def test_locate_finds_a_root_relative_path_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert provenance.locate("configs/campaign") == str(ROOT / "configs" / "campaign")
    (tmp_path / "configs").mkdir()  # here, a path relative to the working folder wins
    assert provenance.locate("configs") == "configs"
    assert provenance.locate("nowhere/at/all") == "nowhere/at/all"
    assert provenance.locate("cifar10") == "cifar10"
    assert provenance.locate("/abs/path") == "/abs/path"


def test_a_new_study_records_its_data_relative_to_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tmp_path plays the project root: the data inside it is recorded relative to it.
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    assert run_main(search_args(tmp_path, trials=1)) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/results/tiny.db")
    assert study.user_attrs["dataset"]["source"] == "data"


def test_portable_database_rewrites_only_attributes_that_hold_a_path(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{db}")
    study.set_user_attr("dataset", {"source": f"{ROOT}/data/x", "classes": ["a"]})
    study.set_user_attr("budget", 400_000)
    trial = study.ask()
    trial.set_user_attr("folder", f"{ROOT}/results/t")
    study.tell(trial, 0.5)
    del study
    assert provenance.portable_database(db) == 2
    attrs = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    assert attrs.user_attrs["dataset"] == {"source": "data/x", "classes": ["a"]}
    assert attrs.trials[0].user_attrs["folder"] == "results/t"
    assert attrs.trials[0].value == 0.5 and attrs.user_attrs["budget"] == 400_000
    before = db.read_bytes()
    assert provenance.portable_database(db) == 0  # nothing left: the file is not written
    assert db.read_bytes() == before
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert not any(name.startswith("s.db-") for name in os.listdir(tmp_path))


def test_a_recorded_relative_artifact_folder_is_found_from_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from search.artifacts import find_artifact_dir

    root = tmp_path / "root"
    (root / "results" / "s" / "artifacts").mkdir(parents=True)
    study = optuna.create_study(study_name="s")
    study.set_user_attr("artifact_dir", "results/s/artifacts")  # as a committed copy holds it
    monkeypatch.setattr(provenance, "ROOT", root)
    monkeypatch.chdir(tmp_path)
    assert find_artifact_dir(study, None, None) == root / "results" / "s" / "artifacts"
