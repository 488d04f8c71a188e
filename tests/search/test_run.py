from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

import search.study
from search.run import main as run_main
from search.training import EpochStats
from space import Genotype, count_params
from space.searchspace import SearchSpace, sample
from tests.conftest import ROOT
from tests.search.searchkit import search_args, tiny_space


def load(tmp_path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/results/{name}.db")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_four_trial_search_end_to_end(tmp_path, capsys) -> None:
    assert run_main(search_args(tmp_path)) == 0
    out = capsys.readouterr().out
    study = load(tmp_path)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    # The study records what it is about; every trial records enough to rebuild it.
    settings = study.user_attrs["settings"]
    assert settings["budget"] == 20_000 and settings["train"]["epochs"] == 2
    assert study.user_attrs["dataset"]["classes"] == ["ant", "bee", "cat"]
    assert study.user_attrs["version"]
    for t in trials:
        g = Genotype.from_dict(t.user_attrs["genotype"])
        assert g.key() == t.user_attrs["key"]
        assert count_params(g, num_classes=3) == t.user_attrs["params"] <= 20_000
        assert t.constraints == {"params_over_budget": t.user_attrs["params"] - 20_000}
        if "duplicate_of" not in t.user_attrs:
            # Two-epoch trials, Hyperband's rungs at 1 and 2 (the last): validated every epoch,
            # the accuracies kept once, as the trial's intermediate values.
            assert "curve" not in t.user_attrs
            assert list(t.intermediate_values) == list(range(1, t.user_attrs["epochs_run"] + 1))
            assert t.user_attrs["train_seconds"] > 0 and t.user_attrs["images_per_s"] > 0
            assert t.user_attrs["device"].startswith("cpu")
        assert t.user_attrs["worker"]["pid"] == os.getpid()
    # One line per trial, then the summary with the top table and the dashboard command.
    assert sum(line.startswith("trial ") for line in out.splitlines()) == 4
    assert "top trials" in out
    assert "optuna-dashboard sqlite:///results/tiny.db --artifact-dir results/tiny/artifacts" in out
    assert (tmp_path / "results" / "tiny" / "artifacts").is_dir()
    assert "use at least half of the 20k budget" in out and "trials/hour" in out


def test_summary_shares_and_top_table_from_hand_made_trials() -> None:
    study = optuna.create_study(direction="maximize")

    def add(state, value, params, **attrs) -> None:
        status = "rejected: over budget" if params > 1000 else "complete"
        attrs = {"params": params, "key": f"g{params}", "status": status, **attrs}
        study.add_trial(optuna.trial.create_trial(state=state, value=value, user_attrs=attrs))

    add(TrialState.COMPLETE, 0.5, 900)  # fits, over half
    add(TrialState.COMPLETE, 0.7, 400)  # fits, under half
    add(TrialState.COMPLETE, 0.7, 400, duplicate_of=1)  # the same genotype again, untrained
    add(TrialState.PRUNED, None, 5000)  # rejected: over half, but does not fit
    add(TrialState.PRUNED, None, 3000)  # rejected
    s = search.study.summarize(study, 1000)
    assert (s.complete, s.pruned, s.rejected) == (3, 0, 2)
    assert s.half_budget_share == 1 / 5
    assert s.rejected_share == 2 / 5
    assert [t.number for t in s.best] == [1, 0]  # best first; the duplicate is not listed


def test_hyperband_prunes_the_weaker_trials_and_they_keep_their_curves(
    tmp_path, monkeypatch
) -> None:
    # A scripted trainer: trial n reaches 0.9 - 0.05 n after every epoch, so later trials are
    # always worse, and Hyperband (3 epochs, factor 3) must stop some of them after epoch 1.
    def scripted_fit(model, train, *, config, on_epoch, eval_epochs, **_):
        accuracy = 0.9 - 0.05 * (config.seed - 1)  # seed = --seed + trial number
        for epoch in range(1, config.epochs + 1):
            acc = accuracy - 0.01 * (3 - epoch) if epoch in eval_epochs else None
            on_epoch(EpochStats(epoch, 0.1, 1.0, 0.5, acc, 100.0, 0.01))

    monkeypatch.setattr(search.study, "fit", scripted_fit)
    args = search_args(tmp_path, "--epochs", "3", "--seed", "1", trials=12)
    assert run_main(args) == 0
    trials = load(tmp_path).get_trials()
    trained = [t for t in trials if "duplicate_of" not in t.user_attrs]
    by_hyperband = [t for t in trained if "pruned by Hyperband" in t.user_attrs["status"]]
    complete = [t for t in trained if t.state == TrialState.COMPLETE]
    assert complete and any(t.user_attrs["epochs_run"] < 3 for t in by_hyperband)
    for t in by_hyperband:  # never at the last epoch, where Optuna's Hyperband has a rung too
        assert t.state == TrialState.PRUNED and t.user_attrs["epochs_run"] < 3
        # Validated only where Hyperband reads it: its rungs at epochs 1 and 3 (factor 3).
        assert set(t.intermediate_values) <= {1, 3}
        assert t.value == t.intermediate_values[max(t.intermediate_values)]  # when it stopped
    for t in complete:
        assert list(t.intermediate_values) == [1, 3] and t.value == t.intermediate_values[3]
    assert trials[0].state == TrialState.COMPLETE  # the best, and first in its bracket
    # The random start is the study's first `startup_trials` (10 by default) finished trials,
    # over both brackets: TPE reads every trial, whatever bracket the pruner shows it (this code
    # once divided it by the bracket count, so `startup_trials = 8` drew 4).
    for i, t in enumerate(trials):
        finished = sum(u.state in (TrialState.COMPLETE, TrialState.PRUNED) for u in trials[:i])
        guided = any(k.startswith("tpe:relative_params") for k in t.system_attrs)
        assert guided == (finished >= 10), (i, finished)


def test_rejected_candidates_cost_no_training(tmp_path, monkeypatch, capsys) -> None:
    # Without fitting, wide shapes overshoot a 20k budget and must be rejected untrained.
    tiny_space(tmp_path / "space.toml", fit_to_budget=False, base_width=[8, 64])
    built, trained = [], []
    real_build, real_fit = search.study.build, search.study.fit
    monkeypatch.setattr(search.study, "build", lambda g, **k: built.append(g) or real_build(g, **k))
    monkeypatch.setattr(search.study, "fit", lambda *a, **k: trained.append(1) or real_fit(*a, **k))
    assert run_main(search_args(tmp_path, "--trials", "8", "--seed", "3")) == 0
    trials = load(tmp_path).get_trials()
    rejected = [t for t in trials if t.user_attrs["status"].startswith("rejected")]
    kept = [t for t in trials if t not in rejected]
    assert rejected and kept, "the seed should give both kinds"
    for t in rejected:
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["params"] > 20_000
        assert t.constraints["params_over_budget"] == t.user_attrs["params"] - 20_000
        assert "over budget" in t.user_attrs["status"] and not t.intermediate_values
    trained_keys = {g.key() for g in built}
    assert all(t.user_attrs["key"] not in trained_keys for t in rejected)
    assert len(built) == len(trained) == sum("duplicate_of" not in t.user_attrs for t in kept)
    assert "rejected over budget" in capsys.readouterr().out


def test_resume_keeps_trials_and_continues_numbering(tmp_path) -> None:
    assert run_main(search_args(tmp_path, trials=2)) == 0
    first = {t.number: (t.state, t.value, t.user_attrs["key"]) for t in load(tmp_path).trials}
    assert run_main(search_args(tmp_path, trials=4)) == 0
    trials = load(tmp_path).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert {t.number: (t.state, t.value, t.user_attrs["key"]) for t in trials[:2]} == first
    # Asking again for the same total runs nothing.
    assert run_main(search_args(tmp_path, trials=4)) == 0
    assert len(load(tmp_path).trials) == 4


def test_resume_with_other_settings_is_refused(tmp_path, capsys) -> None:
    assert run_main(search_args(tmp_path, trials=1)) == 0
    capsys.readouterr()
    assert run_main(search_args(tmp_path, "--epochs", "3", trials=2)) == 2
    err = capsys.readouterr().err
    assert "epochs: 2 in the study, 3 now" in err and len(err.splitlines()) == 1
    assert len(load(tmp_path).trials) == 1


def test_stale_running_trial_is_failed_and_retried_once(tmp_path) -> None:
    assert run_main(search_args(tmp_path, trials=1)) == 0
    study = load(tmp_path)
    # A worker that drew its candidate and died: the trial stays RUNNING with a dead pid.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = study.ask()
    sample(stale, SearchSpace.load(tmp_path / "space.toml"), budget=20_000, num_classes=3)
    stale.set_user_attr("worker", {**search.study.worker_identity(), "pid": dead.pid})
    sampled = load(tmp_path).trials[1].params
    # The total leaves room for exactly one more trial: the queued retry must take it.
    assert run_main(search_args(tmp_path, trials=2)) == 0
    trials = load(tmp_path).trials
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [1]
    assert "worker stopped" in failed[0].user_attrs["status"]
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retried[0].params == sampled  # the same candidate, run again
    assert retried[0].user_attrs["worker"]["pid"] == os.getpid()  # not the dead worker's
    assert not retried[0].user_attrs["status"].startswith("failed")
    assert not [t for t in trials if t.state == TrialState.WAITING]
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 2


def test_which_workers_count_as_gone(tmp_path) -> None:
    # A pid says something only within one boot and pid namespace of one machine; a reboot
    # ends every process; containers sharing a host name are judged by heartbeat, not pid.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = search.study.worker_identity()
    gone = search.study.worker_gone
    assert not gone(here)  # this very process
    assert gone({**here, "pid": dead.pid})
    assert gone({**here, "boot": "an-earlier-boot"})  # rebooted since, even if the pid is reused
    assert not gone({**here, "pid": dead.pid, "pidns": 1})  # another container on this kernel
    assert not gone({**here, "pid": dead.pid, "host": "elsewhere"})
    assert not gone({**here, "pid": dead.pid, "machine": "another-machine", "boot": "b"})
    legacy = {"host": here["host"], "pid": dead.pid, "start": None}  # recorded by 0.1.0
    assert gone(legacy)
    assert run_main(search_args(tmp_path, trials=1)) == 0
    study = load(tmp_path)
    for worker in ({**here, "pid": dead.pid, "pidns": 1}, {**here, "boot": "an-earlier-boot"}):
        study.ask().set_user_attr("worker", worker)
    assert search.study.fail_stale_trials(study, grace=120) == [2]
    trials = load(tmp_path).trials
    assert trials[1].state == TrialState.RUNNING
    assert "rebooted" in trials[2].user_attrs["status"]


def test_two_workers_on_a_journal_file(tmp_path) -> None:
    journal = tmp_path / "results" / "tiny.journal"
    args = search_args(tmp_path, "--workers", "2", "--storage", f"journal:///{journal}", trials=6)
    proc = subprocess.run(
        [sys.executable, "-m", "search.run", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6 == len(trials)
    assert len({t.number for t in finished}) == 6
    assert len({t.user_attrs["worker"]["pid"] for t in finished}) == 2  # both did work
    assert proc.stdout.count("\ntrial ") + proc.stdout.startswith("trial ") == 6


def test_sqlite_with_several_workers_is_refused(tmp_path, capsys) -> None:
    assert run_main(search_args(tmp_path, "--workers", "2")) == 2
    err = capsys.readouterr().err
    assert "SQLite takes one writer" in err and "journal:///" in err
    assert not (tmp_path / "results").exists()


def test_presets_load() -> None:
    from search.run import build_parser, resolve

    for name in ("budget-400k", "budget-5m", "cpu-smoke"):
        plan = resolve(
            build_parser().parse_args(["--config", str(ROOT / "configs" / f"{name}.toml")])
        )
        assert plan.budget in (400_000, 5_000_000, 100_000)
        assert plan.train.epochs >= 1


def test_workers_get_one_gpu_each_round_robin_or_a_share_of_the_cores(monkeypatch) -> None:
    from search.run import _visible_gpus, worker_env

    gpus = ["0", "1", "2"]
    assigned = [worker_env(i, 5, gpus, {"PATH": "/bin"}, 16) for i in range(5)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in assigned] == ["0", "1", "2", "0", "1"]
    assert all(e["PATH"] == "/bin" and "OMP_NUM_THREADS" not in e for e in assigned)
    assert worker_env(1, 4, [], {}, 16)["OMP_NUM_THREADS"] == "4"
    assert worker_env(1, 4, [], {}, 2)["OMP_NUM_THREADS"] == "1"
    assert worker_env(0, 2, [], {"OMP_NUM_THREADS": "3"}, 16)["OMP_NUM_THREADS"] == "3"
    # A CUDA_VISIBLE_DEVICES the user set is what the workers share.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6")
    assert _visible_gpus() == ["4", "6"]


def test_flags_override_the_preset() -> None:
    from search.run import build_parser, resolve

    preset = ["--config", str(ROOT / "configs" / "cpu-smoke.toml")]
    base = resolve(build_parser().parse_args(preset))
    plan = resolve(
        build_parser().parse_args([*preset, "--budget", "250k", "--epochs", "7", "--trials", "3"])
    )
    assert (plan.budget, plan.train.epochs, plan.search.trials) == (250_000, 7, 3)
    assert (base.budget, base.train.epochs) != (plan.budget, plan.train.epochs)
    assert plan.train.batch_size == base.train.batch_size  # what no flag names stays the preset's


def test_a_trial_failing_on_a_bug_says_why(tmp_path, monkeypatch) -> None:
    def broken_fit(*a, **k):
        raise RuntimeError("shapes do not match\nlong detail")

    monkeypatch.setattr(search.study, "fit", broken_fit)
    with pytest.raises(RuntimeError, match="shapes do not match"):  # a bug: a traceback
        run_main(search_args(tmp_path, trials=1))
    [trial] = load(tmp_path).trials
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["status"] == "failed: RuntimeError: shapes do not match"


def _without_val_size(args: list[str]) -> list[str]:
    i = args.index("--val-size")
    return args[:i] + args[i + 2 :]


def test_small_folders_work_without_a_validation_size(tmp_path, capsys) -> None:
    from tests.images import make_image_folder

    make_image_folder(tmp_path / "data", train_per_class=24, test_per_class=2, size=8)
    args = _without_val_size(search_args(tmp_path, trials=2))
    assert run_main(args) == 0
    settings = load(tmp_path).user_attrs["settings"]
    # The study records the number it resolved to: 10% of the 72 training images.
    assert settings["data"]["val_size"] == 7
    assert settings["dataset"]["val_images"] == 7
    assert "65 train / 7 val" in capsys.readouterr().out
    # Resumed without the flag, as with it.
    assert run_main(_without_val_size(search_args(tmp_path, trials=3))) == 0
    assert run_main(search_args(tmp_path, trials=4)) == 2  # an explicit 6 is another split
    assert "data.val_size: 7 in the study, 6 now" in capsys.readouterr().err


def test_a_study_resumes_with_the_validation_size_it_recorded(tmp_path) -> None:
    # Made with an explicit --val-size (say, the 5,000 of CIFAR-10 under the old default), it
    # resumes without the flag, although the default for this data is another number.
    assert run_main(search_args(tmp_path, trials=2)) == 0  # --val-size 6; the default is 3
    assert run_main(_without_val_size(search_args(tmp_path, trials=3))) == 0
    study = load(tmp_path)
    assert study.user_attrs["settings"]["data"]["val_size"] == 6
    assert len(study.trials) == 3


def test_a_search_whose_trials_all_diverged_says_so(tmp_path, monkeypatch, capsys) -> None:
    from search.training import TrainingDiverged

    def diverges(*args, **kwargs):
        raise TrainingDiverged("training loss became nan in epoch 1, step 1")

    monkeypatch.setattr(search.study, "fit", diverges)
    assert run_main(search_args(tmp_path, trials=3)) == 0
    out = capsys.readouterr().out
    assert "no result: every trained trial diverged (3: the training loss became nan or inf)" in out
    from search.report import main as report_main

    assert report_main(["--storage", "sqlite:///results/tiny.db"]) == 2
    err = capsys.readouterr().err
    assert "every trained trial diverged" in err and len(err.strip().splitlines()) == 1
    import optuna_dashboard

    assert "every trained trial diverged" in optuna_dashboard.get_note(load(tmp_path))
