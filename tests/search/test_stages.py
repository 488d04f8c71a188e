"""The stages around the trials (search.stages): references enqueued or trained as yardsticks,
the race of the leaders, the recipe stage and the choice, on tiny generated images."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.config import DataConfig
from search.retrain import select_trials
from search.run import main as run_main
from search.stages.race import pooled_spread, race_verdict, summarize_race
from search.stages.references import searched_trials, standing_of
from search.study import STANDARD_RECIPE, SearchSettings
from search.training import TrainConfig
from space import Genotype
from tests.search.searchkit import REFERENCE, search_args

BUDGET = "6k"
# The tiny space can draw this one exactly (one basic block, stem half its width, 16 -> 8
# channels at the budget's scale) ...
EXPRESSIBLE = REFERENCE


def yardstick_text() -> str:
    """... and not this one: a head dropout of 0.2 is not among the space's 0, 0.1, 0.3."""
    lines = REFERENCE.splitlines()
    return "\n".join([lines[0], "head_dropout = 0.2", *lines[1:]]) + "\n"


def stage_args(tmp: Path, *extra: str, trials: int = 6) -> list[str]:
    (tmp / "ref.toml").write_text(EXPRESSIBLE)
    (tmp / "odd.toml").write_text(yardstick_text())
    args = search_args(
        tmp,
        "--reference",
        str(tmp / "ref.toml"),
        "--reference",
        str(tmp / "odd.toml"),
        "--race-top",
        "2",
        "--race-epochs",
        "3",
        "--recipe-trials",
        "3",
        *extra,
        trials=trials,
    )
    args[args.index("--budget") + 1] = BUDGET
    return args


def load(tmp: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp / 'results' / 'tiny.db'}")


@pytest.mark.slow
def test_a_search_seeds_races_searches_the_recipe_and_chooses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_main(stage_args(tmp_path)) == 0
    out = capsys.readouterr().out
    study = load(tmp_path)
    attrs = study.user_attrs

    # The expressible reference is the first trial, trained whole (never pruned) as itself.
    first = study.trials[0]
    assert first.user_attrs["reference"] == "ref"
    assert first.state == TrialState.COMPLETE
    ref = Genotype.load(tmp_path / "ref.toml")
    assert first.user_attrs["key"] == ref.key()
    assert first.user_attrs["epochs_run"] == 2
    assert attrs["references"]["enqueued"] == ["ref"]
    assert attrs["references"]["yardsticks"] == ["odd"]
    assert isinstance(attrs["yardsticks"]["odd"]["val_acc"], float)

    # Every trial trained with the standard recipe: the search ranked architectures.
    for t in study.trials:
        if "genotype" in t.user_attrs:
            assert Genotype.from_dict(t.user_attrs["genotype"]).augment == STANDARD_RECIPE
    assert attrs["settings"]["recipe"] == dataclasses.asdict(STANDARD_RECIPE)

    # The race: the 2 best searched architectures and the best reference, 2 seeds each.
    race = attrs["race"]
    assert race["epochs"] == 3 and race["seeds"] == 2
    sources = [e["source"] for e in race["entries"]]
    assert sources.count("search") == 2 and sources.count("reference") == 1
    for e in race["entries"]:
        assert len(e["race_runs"]) == 2 and e["race_val_acc"] is not None
    assert race["winner"] in {e["name"] for e in race["entries"] if e["source"] == "search"}
    runs = sorted((tmp_path / "results" / "tiny" / "race-3ep").rglob("metrics.json"))
    assert len(runs) == 6
    assert all("test_acc" not in json.loads(p.read_text()) for p in runs)  # never the test split

    # The recipe stage: its own study in the same storage, the fixed recipe first.
    recipe = attrs["recipe"]
    inner = optuna.load_study(study_name=recipe["study"], storage=study._storage)
    complete = inner.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3 and complete[0].user_attrs.get("fixed") is True
    assert recipe["fixed_val_acc"] == complete[0].value

    # The choice: the race's winner with the recipe stage's best recipe, and retrain takes it.
    choice = attrs["choice"]
    assert choice["name"] == race["winner"]
    [first_pick, *_] = select_trials(study, 6000, 3)
    assert first_pick.name == choice["name"]
    assert first_pick.genotype.to_dict() == choice["genotype"]
    assert all(c.trial != 0 for c in select_trials(study, 6000, 10))  # never the reference

    for text in ("references among the trials", "race:", "recipe stage:", "the search's choice"):
        assert text in out
    # The dashboard's note (the live one while the search runs, and the report's) says it too.
    from search.figures import StudyView
    from search.report import note_markdown

    note = note_markdown(StudyView.of(study))
    assert "How the search chose" in note and "references among the trials" in note
    assert "the search's choice" in note

    # Run again: everything finished, nothing trains, the record stays.
    stamps = [p.stat().st_mtime_ns for p in runs]
    assert run_main(stage_args(tmp_path)) == 0
    assert [p.stat().st_mtime_ns for p in runs] == stamps
    again = load(tmp_path).user_attrs
    assert again["race"] == race and again["choice"] == choice


@pytest.mark.slow
def test_a_joint_study_resumes_joint_without_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A study recorded without a recipe (a joint search, as every study before the setting
    # existed) resumes as it was made, not refused for "other settings".
    monkeypatch.chdir(tmp_path)
    assert run_main(search_args(tmp_path, "--recipe", "joint", trials=2)) == 0
    assert "recipe" not in load(tmp_path).user_attrs["settings"]
    assert run_main(search_args(tmp_path, trials=4)) == 0
    assert len(load(tmp_path).trials) == 4
    # naming another recipe for it is refused, naming the difference
    assert run_main(search_args(tmp_path, "--recipe", "standard", trials=5)) == 2


@pytest.mark.parametrize("sampler", ["random", "nsga2", "gp"])
def test_each_sampler_runs_a_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sampler: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_main(search_args(tmp_path, "--sampler", sampler, "--epochs", "1", trials=5)) == 0
    assert len(load(tmp_path).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 5


def test_bad_sampler_and_missing_scipy_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_main(search_args(tmp_path, "--sampler", "cmaes")) == 2
    err = capsys.readouterr().err
    assert "sampler must be one of tpe, random, nsga2, gp, but got 'cmaes'" in err
    monkeypatch.setitem(sys.modules, "scipy", None)  # import scipy fails
    assert run_main(search_args(tmp_path, "--sampler", "gp")) == 2
    err = capsys.readouterr().err.strip()
    assert "needs scipy" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "results").exists()


# -- pure parts ---------------------------------------------------------------------------------


def _trial(number: int, value: float, params: int, **attrs: object) -> optuna.trial.FrozenTrial:
    t = create_trial(
        value=value,
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)},
        user_attrs={"params": params, "key": f"k{number}", **attrs},
    )
    t.number = number
    return t


def test_standing_ranks_references_among_the_trials() -> None:
    trials = [
        _trial(0, 0.50, 300, reference="resnet20"),
        _trial(1, 0.62, 390),
        _trial(2, 0.55, 380),
        _trial(3, 0.40, 250),
        _trial(4, 0.62, 390, duplicate_of=1),  # a repeat: not ranked twice
    ]
    attrs = {
        "yardsticks": {
            "odd": {"val_acc": 0.58, "params": 350},
            "big": {"val_acc": 0.9, "params": 500},
        }
    }
    where = standing_of(trials, attrs, 400)
    places = {p.name: p for p in where.places}
    assert places["big"].rank == 1 and places["big"].over_budget
    assert places["odd"].rank == 3 and places["resnet20"].rank == 5
    assert where.best_reference.name == "odd"  # the best within the budget
    assert where.searched_above == 1 and where.beaten is True
    assert where.best_searched == (1, 0.62)
    assert any("1 searched architecture(s) above odd" in line for line in where.lines())


def test_race_verdict_weighs_the_margin_against_the_seed_spread() -> None:
    assert pooled_spread([[0.5, 0.52], [0.6, 0.6]]) == pytest.approx(0.01)
    assert race_verdict(0.05, 0.01) == "beat"
    assert race_verdict(-0.05, 0.01) == "lost"
    assert race_verdict(0.015, 0.01) == "tie"
    assert race_verdict(None, 0.01) == "no reference raced"
    entries = [
        {
            "name": "trial-3",
            "source": "search",
            "trial": 3,
            "val_acc": 0.5,
            "race_runs": [0.6, 0.62],
            "race_val_acc": 0.61,
        },
        {
            "name": "trial-1",
            "source": "search",
            "trial": 1,
            "val_acc": 0.6,
            "race_runs": [0.55, 0.57],
            "race_val_acc": 0.56,
        },
        {
            "name": "resnet20",
            "source": "reference",
            "trial": 0,
            "val_acc": 0.55,
            "race_runs": [0.5, 0.52],
            "race_val_acc": 0.51,
        },
    ]
    record = summarize_race(entries, epochs=16, seeds=2, top=2)
    assert record["winner"] == "trial-3" and record["winner_trial"] == 3  # not the proxy's best
    assert record["best_reference"] == "resnet20"
    assert record["margin"] == pytest.approx(0.10) and record["verdict"] == "beat"


def test_a_reference_whose_trial_failed_is_enqueued_again_and_ranked_by_its_complete_trial(
    tmp_path: Path,
) -> None:
    from search.stages.references import _enqueue_again

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    record = {"enqueued": ["resnet20"], "yardsticks": []}
    study.enqueue_trial({"x": 0.25}, user_attrs={"reference": "resnet20"})
    t = study.ask()  # the reference, then a Ctrl-C in it
    t.suggest_float("x", 0, 1)
    study.tell(t, state=TrialState.FAIL)
    _enqueue_again(study, record)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs["reference"] == "resnet20"
    _enqueue_again(study, record)  # once is enough: it waits to run
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1
    again = study.ask()
    assert again.suggest_float("x", 0, 1) == 0.25  # the same network
    failed = create_trial(
        state=TrialState.FAIL,
        params={"x": 0.25},
        distributions={"x": FloatDistribution(0, 1)},
        user_attrs={"reference": "resnet20", "params": 100},
    )
    failed.number = 0
    where = standing_of(
        [failed, _trial(1, 0.6, 100, reference="resnet20"), _trial(2, 0.5, 100)], {}, 400
    )
    [place] = where.places
    assert place.val_acc == 0.6 and place.trial == 1  # the complete one, not the failed one


def test_stages_run_in_one_process_at_a_time(tmp_path: Path) -> None:
    import os

    from search.stages import claim_stages, release_stages
    from search.storage import ClaimLock, parse_storage
    from search.study import worker_identity

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=url, study_name="s")
    lock = ClaimLock(parse_storage(url), study._storage, "s")
    other = {**worker_identity(), "pid": os.getppid(), "start": None}  # a live process
    study.set_user_attr("stages_owner", {"worker": other, "time": 0})
    assert claim_stages(study, lock) == f"{other['host']} pid {other['pid']}"
    gone = {**other, "pid": 2**22 + 12345}  # no such process
    study.set_user_attr("stages_owner", {"worker": gone, "time": 0})
    assert claim_stages(study, lock) is None
    assert study.user_attrs["stages_owner"]["worker"]["pid"] == os.getpid()
    release_stages(study, lock)
    assert study.user_attrs["stages_owner"] is None
    lock.close()


def test_the_recipe_stage_keeps_to_the_space_and_resumes_a_trial_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from search.stages import recipe as recipe_module
    from space.searchspace import SearchSpace
    from tests.search.searchkit import tiny_space

    space = SearchSpace.load(tiny_space(tmp_path / "space.toml"))
    recipes = space.recipe_space()
    off_list = dataclasses.replace(STANDARD_RECIPE, crop_padding=8)  # the space has 0, 2, 4
    assert recipe_module._fixed_values(off_list, recipes) is None
    assert recipe_module._fixed_values(STANDARD_RECIPE, recipes) is not None

    # A run killed in the stage left trial 1 running with its recipe drawn: the next run
    # trains it on (in its own folder), not a new one in its place.
    trained: list[str] = []

    def fake_jobs(jobs, **kwargs):  # type: ignore[no-untyped-def]
        from search.jobs import Outcome

        trained.extend(j.out.name for j in jobs)
        return [Outcome(j, {"val_acc": 0.5}) for j in jobs]

    monkeypatch.setattr(recipe_module, "run_jobs", fake_jobs)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    main = optuna.create_study(storage=url, study_name="m")
    inner = optuna.create_study(storage=url, study_name=recipe_module.recipe_study_name("m", 3, 2))
    inner.set_user_attr("architecture", "k")
    inner.enqueue_trial(
        recipe_module._fixed_values(STANDARD_RECIPE, recipes), user_attrs={"fixed": True}
    )
    first = inner.ask()
    inner.tell(first, 0.4)
    left = inner.ask()
    augment = recipe_module.sample_augment(left, recipes)
    left.set_user_attr("augment", dataclasses.asdict(augment))
    from search.storage import ClaimLock, parse_storage

    lock = ClaimLock(parse_storage(url), main._storage, "m")
    settings = SearchSettings(
        budget=6000,
        space=space,
        data=DataConfig(source="unused"),
        dataset={},
        train=TrainConfig(epochs=2, batch_size=8),
        min_epochs=1,
        reduction_factor=3,
    )
    record = recipe_module.run_recipe_stage(
        main._storage,
        main,
        settings,
        None,  # type: ignore[arg-type]  # the jobs are faked: no data is read
        space=space,
        trial=3,
        genotype=Genotype.from_dict({"stages": [{"depth": 1, "width": 8}]}),
        trials=3,
        epochs=2,
        seed=0,
        device=torch.device("cpu"),
        concurrency=1,
        folder=tmp_path,
        lock=lock,
        progress=False,
    )
    lock.close()
    assert trained[0] == f"trial-{left.number}"  # the one left running, first
    assert record["trials"] == 3 and record["fixed_val_acc"] == 0.4


@pytest.mark.slow
def test_a_timed_search_stopped_in_its_race_resumes_the_race_not_the_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import search.run as run_module

    monkeypatch.chdir(tmp_path)
    args = stage_args(tmp_path, "--timeout", "6", "--recipe-trials", "0", trials=1000)
    real = run_module.run_race

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "run_race", interrupted)
    assert run_main(args) == 130
    study = load(tmp_path)
    trials = len(study.trials)
    assert study.user_attrs["trials_ended"]["why"] == "timeout"
    monkeypatch.setattr(run_module, "run_race", real)
    capsys.readouterr()
    assert run_main(args) == 0
    out = capsys.readouterr().out
    assert "going on with the stages after them" in out
    study = load(tmp_path)
    assert len(study.trials) == trials  # no other timeout's worth of trials
    if searched_trials(study, 6000):  # a loaded machine may finish no searched trial in 6 s
        assert "race" in study.user_attrs and "choice" in study.user_attrs, out
