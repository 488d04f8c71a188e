"""The campaign: search, retrain beside references, report, on tiny generated images; resume
after an interruption; bad presets refused with one line and nothing written."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from search import campaign, experiment
from search.campaign import result as comparison
from search.study import STANDARD_RECIPE
from space import Genotype
from tests.conftest import ROOT
from tests.search.searchkit import campaign_preset as write_preset

REQUIRED_COLUMNS = {
    "budget",
    "source",
    "name",
    "params",
    "macs",
    "test_acc_mean",
    "test_acc_std",
    "test_acc_tta_mean",
    "seeds",
    "epochs",
    "train_images",
    "device",
    "minutes",
}


def run(tmp: Path, preset: Path, *extra: str) -> int:
    return campaign.main(
        ["--config", str(preset), "--results", str(tmp / "results"), "--no-progress", *extra]
    )


@pytest.mark.slow
def test_campaign_runs_resumes_and_writes_a_comparison(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    preset = write_preset(tmp_path)
    out = tmp_path / "results" / "reference" / "tiny"
    work = tmp_path / "results" / "campaigns" / "tiny"

    # Interrupted in the retraining, as a Ctrl-C would: the second model's training raises.
    real = experiment.run_experiment
    calls = []

    def interrupted(*args: object, **kwargs: object) -> dict:
        if "retrain" in Path(str(args[2])).parts:  # the search's yardstick trains before
            calls.append(args)
        if len(calls) == 3:  # trial's two seeds done, then Ctrl-C in the reference's first
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr("search.jobs.run_experiment", interrupted)
    assert run(tmp_path, preset) == 130
    partial = pd.read_csv(out / "leaderboard.csv")  # readable, with what finished
    assert list(partial["name"]) == ["trial-" + str(int(partial["trial"].iloc[0]))]
    assert partial["seeds"].iloc[0] == 2
    finished = sorted(work.glob("tiny-20k/retrain/trial-*/seed-*/metrics.json"))
    assert len(finished) == 2
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    db = work / "tiny-20k.db"
    with sqlite3.connect(db) as con:
        trials_before = con.execute("SELECT number, datetime_start FROM trials").fetchall()
    assert len(trials_before) == 3

    monkeypatch.setattr("search.jobs.run_experiment", real)
    assert run(tmp_path, preset) == 0
    # Resumed: no trial searched again, no finished model trained again.
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT number, datetime_start FROM trials").fetchall() == trials_before
    assert {p: p.stat().st_mtime_ns for p in finished} == stamps

    board = pd.read_csv(out / "leaderboard.csv")
    assert set(board.columns) >= REQUIRED_COLUMNS
    assert set(board["source"]) == {"search", "reference"}
    own = board[board["recipe"] == "own"]
    assert sorted(own["source"]) == ["reference", "search"]
    # Swapped recipes: the reference with the searched augmentation, the winner with the
    # standard one, and the genotype keys say so.
    swapped = board.set_index("name")
    winner = own[own["source"] == "search"].iloc[0]
    assert swapped.loc["ref+searched", "recipe"] == "searched"
    assert swapped.loc[f"{winner['name']}+standard", "recipe"] == "standard"
    assert swapped.loc[f"{winner['name']}+standard", "key"].endswith("~p4_f1_c0_none_m9_x0_k0_l0.1")
    assert swapped.loc["ref+searched", "key"].split("~")[2] == winner["key"].split("~")[2]
    # Every model trained with the same data, epochs and seeds.
    assert set(board["seeds"]) == {2}
    assert set(board["epochs"]) == {1}
    assert board["train_images"].nunique() == 1
    assert set(board["test_images"]) == {6}  # the whole test split: 3 classes x 2 images
    # Mean and spread are those of the seeds' own metrics files.
    seeds = [
        json.loads(p.read_text())["test_acc"]
        for p in sorted(work.glob(f"tiny-20k/retrain/{winner['name']}/seed-*/metrics.json"))
    ]
    assert winner["test_acc_mean"] == pytest.approx(sum(seeds) / 2)
    assert winner["test_acc_std"] == pytest.approx(abs(seeds[0] - seeds[1]) / 2**0.5)

    readme = (out / "README.md").read_text()
    assert f"python -m search.campaign --config {preset}" in readme
    assert winner["name"] in readme and "ref" in readme
    assert "seed spread" in readme or "one seed" in readme
    assert "wall time" in readme and "torch" in readme
    assert (out / "pareto.html").stat().st_size > 1000
    assert (out / "campaign.toml").read_text() == preset.read_text()
    assert (work / "campaign.toml").read_text() == preset.read_text()  # kept as run
    with sqlite3.connect(out / "tiny-20k.db") as con:  # the study, copied whole
        assert len(con.execute("SELECT number FROM trials").fetchall()) == 3
    record = json.loads((out / "campaign.json").read_text())
    assert len(record["sessions"]) == 2 and record["wall_seconds"] > 0
    # The search had finished: the second session did not run it again.
    assert [x["stage"] for x in record["sessions"][1]["stages"]] == ["retrain", "report"]


def test_summarize_writes_the_result_from_what_exists(tmp_path: Path, capsys) -> None:
    preset = write_preset(tmp_path)
    # Nothing computed here (a fresh clone holding a committed result): refused, result kept.
    committed = tmp_path / "results" / "reference" / "tiny" / "README.md"
    committed.parent.mkdir(parents=True)
    committed.write_text("a committed result")
    assert run(tmp_path, preset, "--summarize") == 2
    assert "nothing to summarize" in capsys.readouterr().err
    assert committed.read_text() == "a committed result"
    assert not (tmp_path / "results" / "campaigns").exists()
    # A campaign begun and not finished: a partial result that says so.
    (tmp_path / "results" / "campaigns" / "tiny").mkdir(parents=True)
    assert run(tmp_path, preset, "--summarize") == 0
    board = pd.read_csv(tmp_path / "results" / "reference" / "tiny" / "leaderboard.csv")
    assert board.empty and set(board.columns) >= REQUIRED_COLUMNS
    assert "not finished yet" in (tmp_path / "results/reference/tiny/README.md").read_text()


def _rows(search: float, reference: float, std: float, **extra: dict) -> pd.DataFrame:
    base = {"budget": 400_000, "recipe": "own", "seeds": 2, "seeds_planned": 2}
    base |= {"params": 300_000, "macs": 40_000_000}
    rows = [
        {**base, "source": "search", "name": "trial-3", "chosen": True, "val_acc": 0.6,
         "test_acc_mean": search, "test_acc_std": std, "test_acc_tta_mean": search},
        {**base, "source": "reference", "name": "resnet20", "chosen": False, "val_acc": None,
         "test_acc_mean": reference, "test_acc_std": std, "test_acc_tta_mean": reference},
    ]  # fmt: skip
    for name, row in extra.items():
        rows.append({**base, "name": name, **row})
    return pd.DataFrame(rows)


def test_verdict_weighs_the_margin_against_the_seed_spread() -> None:
    assert "Search won" in comparison.verdict(_rows(0.70, 0.65, 0.01), 400_000)
    assert "Search lost" in comparison.verdict(_rows(0.60, 0.65, 0.01), 400_000)
    tied = comparison.verdict(_rows(0.66, 0.65, 0.01), 400_000)
    assert "No clear winner" in tied and "+1.00 points" in tied


def test_verdict_pools_the_spread_over_the_budgets_models() -> None:
    # Two models agreeing by chance across their two seeds say little about the noise: the
    # spread is pooled over every model of the budget (same seeds), here mostly 3 points.
    noisy = {
        f"ref{i}": {"source": "reference", "recipe": "own", "chosen": False,
                    "test_acc_mean": 0.5, "test_acc_std": 0.03, "test_acc_tta_mean": 0.5}
        for i in range(4)
    }  # fmt: skip
    text = comparison.verdict(_rows(0.66, 0.65, 0.0001, **noisy), 400_000)
    assert "No clear winner" in text and "6 models" in text and "6 degrees of freedom" in text
    assert comparison.pooled_spread(_rows(0.66, 0.65, 0.02))[0] == pytest.approx(0.02)


def test_verdict_headlines_the_searchs_choice_not_the_test_splits() -> None:
    # trial-5 did better on the test split, but the search chose trial-3 (validation): the
    # verdict is about trial-3, so the test split picks nothing.
    other = {
        "trial-5": {
            "source": "search",
            "recipe": "own",
            "chosen": False,
            "val_acc": 0.55,
            "test_acc_mean": 0.80,
            "test_acc_std": 0.01,
            "test_acc_tta_mean": 0.8,
        }
    }
    text = comparison.verdict(_rows(0.60, 0.65, 0.01, **other), 400_000)
    assert "Search lost" in text and "trial-3" in text and "trial-5" not in text


def test_a_partial_budget_gets_no_verdict() -> None:
    planned = [{"name": "trial-3"}, {"name": "resnet20"}, {"name": "resnet32"}]
    text = comparison.verdict(_rows(0.70, 0.65, 0.01), 400_000, planned)
    assert text.startswith("**Partial result at 400k**") and "won" not in text
    short = _rows(0.70, 0.65, 0.01)
    short.loc[1, "seeds"] = 1
    assert "Partial" in comparison.verdict(short, 400_000, planned[:2])
    assert "won" in comparison.verdict(_rows(0.70, 0.65, 0.01), 400_000, planned[:2])


def test_without_swapped_recipes_the_verdict_says_the_margin_mixes_both() -> None:
    assert "mixes architecture and recipe" in comparison.verdict(_rows(0.7, 0.65, 0.01), 400_000)


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"campaign": 'colour = "red"'}, "unknown key 'colour'"),
        ({"search": 'budget = "400k"'}, "set by the campaign"),
        ({"retrain": "top = 1\nlearning_rate = 0.1"}, "unknown key 'learning_rate'"),
        ({"retrain": "seeds = 0"}, "seeds must be an integer >= 1"),
        ({"train": "epochs = 0"}, "epochs must be an integer >= 1"),
        ({"data": 'source = "/nowhere/at/all"'}, "no such file or folder"),
        ({"data": "val_size = 6"}, "has no source"),
        ({"budgets": None, "extra": "x = 1"}, "unknown table or key 'extra'"),
        ({"campaign": 'name = "../up"'}, "name must be letters"),
        ({"campaign": 'device = "tpu"'}, "--device must be"),
    ],
)
def test_bad_presets_get_one_line_and_leave_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tables: dict, message: str
) -> None:
    preset = write_preset(tmp_path, **tables)
    assert run(tmp_path, preset) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("budgets", "message"),
    [
        ("", "no [[budgets]] entries"),
        ('[[budgets]]\nbudget = "abc"\n', "abc"),
        ('[[budgets]]\nbudget = "20k"\nreferences = ["no-such-net"]\n', "no-such-net"),
        ('[[budgets]]\nbudget = "20k"\nreferences = "resnet20"\n', "must be a list"),
        ('[[budgets]]\nbudget = "20k"\nepochs = 3\n', "unknown key 'epochs'"),
        ('[[budgets]]\nbudget = "20k"\nreferences = []\n', "has no references"),
        ('[[budgets]]\nbudget = "20k"\ntop = 0\nreferences = ["resnet20"]\n', "top must be"),
        (
            '[[budgets]]\nbudget = "20k"\nreferences = ["resnet20"]\n'
            '[[budgets]]\nbudget = "2e4"\nreferences = ["resnet20"]\n',
            "appears twice",
        ),
        ('[[budgets]]\nbudget = "10"\nreferences = ["resnet20"]\n', "below every network"),
        (
            '[[budgets]]\nbudget = "20k"\nmax_macs = "1k"\nreferences = ["resnet20"]\n',
            "below every network",
        ),
    ],
)
def test_bad_budget_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], budgets: str, message: str
) -> None:
    preset = write_preset(tmp_path)
    text = preset.read_text().split("[[budgets]]")[0] + budgets
    preset.write_text(text)
    assert run(tmp_path, preset) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "results").exists()


def test_data_the_search_refuses_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A validation split larger than the data: only decoding finds it, inside search.run.
    preset = write_preset(tmp_path, data=f'source = "{tmp_path / "data"}"\nval_size = 999')
    os.environ.pop("NAS_CACHE_DIR", None)
    assert run(tmp_path, preset) == 2
    assert "999" in capsys.readouterr().err
    assert not (tmp_path / "results" / "campaigns" / "tiny").exists()
    assert not (tmp_path / "results" / "reference").exists()


@pytest.mark.parametrize("preset", sorted((ROOT / "configs" / "campaign").glob("*.toml")))
def test_the_shipped_campaign_presets_load(preset: Path, tmp_path: Path) -> None:
    # The data is checked to exist only: a clean clone has no data/ folder.
    plan = campaign.load_campaign(
        preset, data=str(tmp_path), device="cpu", results=tmp_path / "results", out=None
    )
    campaign.check_plans(plan)
    assert plan.retrain.seeds >= 2  # a spread to weigh the margin against
    for b in plan.budgets:
        assert b.references  # every budget has hand-designed networks to beat


def test_the_standard_recipe_is_the_references_own() -> None:
    # Swapped recipes train a searched network "with the references' recipe": it must be theirs.
    for path in sorted((ROOT / "configs" / "reference").glob("*.toml")):
        assert Genotype.load(path).augment == STANDARD_RECIPE, path.name


def test_a_session_killed_mid_stage_keeps_its_time(tmp_path: Path) -> None:
    # A machine taken back kills the campaign with no chance to write anything: the heartbeat
    # written while the stage ran is all that is left, and the next session counts it.
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "log.json"
    code = (
        "import time; from pathlib import Path; from search.campaign import Log\n"
        f"log = Log.open(Path({str(path)!r})); log.heartbeat = 0.05; log.start()\n"
        "with log.running('search', '400k'):\n"
        "    print('running', flush=True); time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"running\n"
        time.sleep(0.6)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    killed = campaign.Log.open(path)
    assert killed.cut_short() == 1
    assert 0.4 < killed.seconds("search") < 5 and killed.seconds() >= killed.seconds("search")
    assert killed.seconds("retrain") == 0

    # The next session runs its stages to the end: they count beside the killed one's.
    killed.start()
    with killed.running("retrain", "400k"):
        pass
    killed.stage("retrain", "400k", 2.0, 0)
    again = campaign.Log.open(path)
    assert [("running" in s) for s in again.sessions] == [True, False]
    assert again.seconds("retrain") == 2.0 and again.seconds("search") == killed.seconds("search")
    assert not again.finished("search", "400k", "any")  # a killed stage never counts as done


@pytest.mark.slow
def test_campaign_races_the_leaders_and_retrains_the_choice(tmp_path: Path) -> None:
    # The defaults: every trial with the standard recipe, the race, the recipe stage.
    search = (
        f'trials = 4\nspace = "{tmp_path / "space.toml"}"\nstartup_trials = 2\n'
        "race_top = 2\nrace_epochs = 2\nrecipe_trials = 2"
    )
    preset = write_preset(tmp_path, search=search, swap=False)
    assert run(tmp_path, preset) == 0
    out = tmp_path / "results" / "reference" / "tiny"
    board = pd.read_csv(out / "leaderboard.csv").set_index("name")
    study = comparison.load_study_if_any(
        f"sqlite:///{tmp_path / 'results' / 'campaigns' / 'tiny' / 'tiny-20k.db'}", "tiny-20k"
    )
    choice = study.user_attrs["choice"]
    race = study.user_attrs["race"]
    # The chosen network is the race's winner, retrained with the recipe the stage found.
    assert board.loc[choice["name"], "chosen"]
    assert board.loc[choice["name"], "key"] == choice["key"]
    entry = next(e for e in race["entries"] if e["name"] == choice["name"])
    assert board.loc[choice["name"], "race_val_acc"] == pytest.approx(entry["race_val_acc"])
    # The reference, a yardstick here (the space cannot draw it at this budget), was raced.
    assert study.user_attrs["references"]["yardsticks"] == ["ref"]
    assert board.loc["ref", "race_val_acc"] == pytest.approx(
        next(e for e in race["entries"] if e["name"] == "ref")["race_val_acc"]
    )
    readme = (out / "README.md").read_text()
    assert "How the search chose at 20k" in readme and "references among the trials" in readme


def _ran_elsewhere(work: Path, preset: Path) -> dict:
    """A work folder as a GPU machine left it: its log, the preset as run, its study."""
    work.mkdir(parents=True)
    session = {
        "started": "2026-12-04T11:57:14+00:00",
        "host": "vm",
        "command": f"python -m search.campaign --config {preset} --no-progress",
        "machine": "Intel(R) Xeon(R) Processor, 16 cores, 126 GB; GPU NVIDIA H200",
        "versions": {"budget_nas": "0.1.0", "python": "3.12.3", "torch": "2.11.0+cu130"},
        "seconds": 212.0,
        "stages": [{"stage": "search", "budget": "20k", "seconds": 47.1, "exit": 0}],
    }
    (work / "log.json").write_text(json.dumps({"sessions": [session]}))
    (work / "campaign.toml").write_text(preset.read_text())
    return session


def test_summarize_keeps_the_run_s_preset_machine_versions_and_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    from search import provenance

    preset = write_preset(tmp_path)
    work = tmp_path / "results" / "campaigns" / "tiny"
    session = _ran_elsewhere(work, preset)
    as_run = preset.read_text()
    # The study that run left, with the paths of its machine (tmp_path plays the project root).
    study = optuna.create_study(study_name="tiny-20k", storage=f"sqlite:///{work}/tiny-20k.db")
    study.set_user_attr("budget", 20_000)
    study.set_user_attr("dataset", {"name": "data", "source": f"{tmp_path}/data"})
    study.set_user_attr("artifact_dir", f"{work}/tiny-20k/artifacts")
    del study
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    # The preset is edited after the run: the result still shows the preset as run.
    preset.write_text(as_run.replace("seeds = 2", "seeds = 5"))
    assert run(tmp_path, preset, "--summarize") == 0
    out = tmp_path / "results" / "reference" / "tiny"
    assert (out / "campaign.toml").read_text() == as_run
    record = json.loads((out / "campaign.json").read_text())
    assert record["versions"] == session["versions"]  # not this machine's torch
    assert record["machines"] == [session["machine"]]
    assert record["command"] == "python -m search.campaign --config tiny.toml --no-progress"
    assert record["preset"] == "tiny.toml"
    readme = (out / "README.md").read_text()
    assert "torch 2.11.0+cu130" in readme and "GPU NVIDIA H200" in readme
    assert "are in `results/campaigns/tiny/`" in readme
    # The committed copy of the study names no folder of the machine; the work one is as run.
    copy = optuna.load_study(study_name="tiny-20k", storage=f"sqlite:///{out}/tiny-20k.db")
    assert copy.user_attrs["dataset"]["source"] == "data"
    assert copy.user_attrs["artifact_dir"] == "results/campaigns/tiny/tiny-20k/artifacts"
    with sqlite3.connect(work / "tiny-20k.db") as con:
        assert str(tmp_path) in str(con.execute("SELECT * FROM study_user_attributes").fetchall())

    # A work folder from before sessions kept their versions and the preset: the versions its
    # study recorded, and the preset file itself.
    (work / "campaign.toml").unlink()
    del session["versions"]
    (work / "log.json").write_text(json.dumps({"sessions": [session]}))
    study = optuna.load_study(study_name="tiny-20k", storage=f"sqlite:///{work}/tiny-20k.db")
    study.set_user_attr("versions", {"torch": "2.9.0"})
    assert run(tmp_path, preset, "--summarize") == 0
    assert json.loads((out / "campaign.json").read_text())["versions"] == {"torch": "2.9.0"}
    assert (out / "campaign.toml").read_text() == preset.read_text() != as_run


def test_a_session_records_its_versions(tmp_path: Path) -> None:
    from search import provenance

    log = campaign.Log.open(tmp_path / "log.json")
    log.start()
    again = campaign.Log.open(tmp_path / "log.json")
    assert again.sessions[0]["versions"] == provenance.versions()


def test_a_result_is_rewritten_from_its_own_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The committed GPU result: its work folder stayed on the device. Its README comes back
    # from the result's own files, with the run's numbers, machine and versions, and the notes.
    import shutil

    out = tmp_path / "gpu"
    shutil.copytree(ROOT / "results" / "reference" / "gpu", out)
    committed = (out / "README.md").read_text()
    (out / "README.md").unlink()
    (out / "NOTES.md").write_text("## Notes\n\nhand-written\n")
    monkeypatch.setattr("search.report.write_png", lambda figures, out: ([], "no PNG: test"))
    kept = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.suffix != ".png"}
    rows = comparison.rewrite_result(out)
    assert len(rows) == 9
    readme = (out / "README.md").read_text()
    # The verdicts, the table, the machine and the versions are those of the run.
    numbers = "**What the numbers are.**"
    assert readme.split(numbers)[0] == committed.split(numbers)[0]

    def machine(text: str) -> str:
        return text.split("## Machine, versions, time")[1].strip().split("\n\n")[0]

    assert machine(readme) == machine(committed)
    assert "**Search lost at 400k.**" in readme and "**Search won at 5M.**" in readme
    assert "GPU NVIDIA H200" in readme and "torch 2.11.0+cu130" in readme
    assert readme.rstrip().endswith("hand-written")
    for name, data in kept.items():  # nothing else changed
        if name not in ("README.md", "NOTES.md"):
            assert (out / name).read_bytes() == data, name


@pytest.mark.slow
def test_until_search_stops_before_the_retraining_and_the_next_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preset = write_preset(tmp_path, swap=False)
    assert run(tmp_path, preset, "--until", "search") == 0
    work = tmp_path / "results" / "campaigns" / "tiny"
    assert (work / "tiny-20k.db").is_file()
    assert not list(work.glob("tiny-20k/retrain/*"))  # nothing retrained yet
    capsys.readouterr()
    assert run(tmp_path, preset) == 0
    assert "finished in an earlier session" in capsys.readouterr().out
    board = pd.read_csv(tmp_path / "results" / "reference" / "tiny" / "leaderboard.csv")
    assert set(board["source"]) == {"search", "reference"}
