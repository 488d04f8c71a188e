"""scripts/bench_sampler.py on a tiny campaign preset: one study per sampler and seed, the
sampler-drawn trials only, and a table of the best accuracy after n trials; resumable."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.scripts import load_script, run_script
from tests.search.searchkit import campaign_preset


@pytest.mark.slow
def test_one_study_per_sampler_and_seed_and_a_table(tmp_path: Path) -> None:
    preset = campaign_preset(tmp_path, swap=False)
    out = tmp_path / "out"
    args = ["--config", str(preset), "--samplers", "tpe", "random", "--seeds", "0", "1"]
    done = run_script("bench_sampler", *args, "--out", str(out), "--parallel", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((out / "samplers.json").read_text())
    assert set(result["best_val_acc"]) == {"tpe", "random"}
    assert result["trials"] == 3 and result["at"][-1] == 3
    for sampler in ("tpe", "random"):
        for seed in (0, 1):
            study = optuna.load_study(
                study_name=f"{sampler}-{seed}", storage=f"sqlite:///{out / f'{sampler}-{seed}'}.db"
            )
            assert len(study.trials) == 3
            assert not any("reference" in t.user_attrs for t in study.trials)  # drawn only
            assert "race" not in study.user_attrs
        assert len(result["best_val_acc"][sampler]["3"]["seeds"]) == 2
    assert "| tpe |" in (out / "samplers.md").read_text()
    assert set(result["minutes"]) == {"tpe-0", "tpe-1", "random-0", "random-1"}
    assert all(m >= 0 for m in result["minutes"].values())
    # run again: every study is finished, nothing trains, the table and the searches' minutes
    # (the studies' own, not the invocation's) are the same
    again = run_script("bench_sampler", *args, "--out", str(out))
    assert again.returncode == 0
    rerun = json.loads((out / "samplers.json").read_text())
    assert rerun["best_val_acc"] == result["best_val_acc"]
    assert rerun["minutes"] == result["minutes"]


def test_an_unknown_sampler_is_refused(tmp_path: Path) -> None:
    preset = campaign_preset(tmp_path, swap=False)
    done = run_script("bench_sampler", "--config", str(preset), "--samplers", "cmaes")
    assert done.returncode == 2 and "unknown cmaes" in done.stderr


def test_a_killed_trial_is_not_counted(tmp_path: Path) -> None:
    bench = load_script("bench_sampler")
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    x = optuna.distributions.FloatDistribution(0, 1)
    for value, state in [
        (0.4, TrialState.COMPLETE),
        (None, TrialState.FAIL),
        (0.6, TrialState.COMPLETE),
    ]:
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": 0.5},
                distributions={"x": x},
                value=value,
                state=state,
                user_attrs={"params": 1000},
            )
        )
    # the failed trial (killed with its run, drawn again on resuming) is no trial of the curve
    assert bench.best_so_far(storage, "s", 2000) == [0.4, 0.6]
    assert bench.best_so_far(storage, "s", 500) == [None, None]  # over the budget: not feasible
