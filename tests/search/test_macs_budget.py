"""The compute budget beside the parameter budget: --max-macs, counted in closed form, rejected
before any weight exists, recorded with the study and shown in its tables and figures."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest

import search.study
from search.figures import StudyView, accuracy_figure
from search.report import main as report_main
from search.run import main as run_main
from space import Genotype, count
from tests.search.searchkit import search_args

MAX_MACS = 150_000  # tiny networks on 8x8 images: about 100k to 300k MACs


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def load(name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage="sqlite:///results/tiny.db")


def test_every_trained_trial_fits_both_budgets(tmp_path, monkeypatch, capsys) -> None:
    built = []
    real_build = search.study.build

    def build(g, **kwargs):
        built.append(g)
        return real_build(g, **kwargs)

    monkeypatch.setattr(search.study, "build", build)
    args = search_args(tmp_path, "--max-macs", "150k", trials=6)
    assert run_main(args) == 0
    assert "at most 150,000 MACs per image" in capsys.readouterr().out
    study = load()
    assert study.user_attrs["settings"]["max_macs"] == MAX_MACS
    for t in study.trials:
        g = Genotype.from_dict(t.user_attrs["genotype"])
        params, macs = count(g, num_classes=3, in_channels=3, image_size=(8, 8))
        assert t.user_attrs["macs"] == macs
        assert t.constraints["macs_over_budget"] == macs - MAX_MACS
        if t.user_attrs["status"].startswith("rejected"):
            assert macs > MAX_MACS or params > 20_000
        else:
            assert macs <= MAX_MACS and params <= 20_000
    # Nothing over either budget was ever built.
    assert built and all(
        count(g, num_classes=3, in_channels=3, image_size=(8, 8))[1] <= MAX_MACS for g in built
    )


def test_the_study_keeps_its_compute_budget(tmp_path, capsys) -> None:
    assert run_main(search_args(tmp_path, "--max-macs", "150k", trials=1)) == 0
    capsys.readouterr()
    # Resumed without it, or with another: refused, naming the setting.
    assert run_main(search_args(tmp_path, trials=2)) == 2
    assert "max_macs" in capsys.readouterr().err
    assert run_main(search_args(tmp_path, "--max-macs", "200k", trials=2)) == 2
    assert len(load().trials) == 1


def test_a_study_without_a_compute_budget_records_none(tmp_path) -> None:
    # Studies made before --max-macs existed record no such key, and still resume.
    assert run_main(search_args(tmp_path, trials=1)) == 0
    assert "max_macs" not in load().user_attrs["settings"]
    assert run_main(search_args(tmp_path, trials=2)) == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [("abc", "max_macs must be a whole number"), ("-5M", "max_macs"), ("10", "below every")],
)
def test_bad_compute_budgets_are_one_line(tmp_path, capsys, value: str, message: str) -> None:
    assert run_main(search_args(tmp_path, f"--max-macs={value}", trials=1)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "results" / "tiny.db").exists()


def test_tables_and_figures_show_the_compute_budget(tmp_path, capsys) -> None:
    assert run_main(search_args(tmp_path, "--max-macs", "150k", trials=4)) == 0
    assert report_main(["--storage", "sqlite:///results/tiny.db", "--no-dashboard"]) == 0
    table = pd.read_csv(tmp_path / "results" / "tiny" / "report" / "trials.csv")
    assert (table["macs_over_budget"] == table["macs"] - MAX_MACS).all()
    view = StudyView.of(load())
    assert view.max_macs == MAX_MACS
    figure = accuracy_figure([view], measure="macs")
    lines = [s for s in figure.layout.shapes if s.type == "line"]
    assert [s.x0 for s in lines] == [MAX_MACS]  # the compute budget's line
    assert any("MACs budget 150k" in a.text for a in figure.layout.annotations)
    params_figure = accuracy_figure([view], measure="params")
    assert any("150k MACs" in a.text for a in params_figure.layout.annotations)
