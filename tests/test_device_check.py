"""scripts/device_check.sh as a CPU dry run on tiny generated images: every step runs, what comes
back fits in 8 files, and a campaign cut by the cap still leaves a readable leaderboard."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.search.searchkit import campaign_preset


def dry_run(
    tmp: Path, *, cap: int, retrain: str | None = None, out: str = "out", **env: str
) -> tuple[int, Path, str]:
    tables = {"retrain": retrain} if retrain else {}
    preset = campaign_preset(tmp, **tables)
    out = tmp / out
    env = {
        **os.environ,
        "OUT": str(out),
        "NAS_DRY_RUN": "1",
        "NAS_PYTHON": sys.executable,
        "NAS_CAMPAIGN_CONFIG": str(preset),
        "NAS_CAMPAIGN_ARGS": "--device cpu",
        "NAS_CAMPAIGN_CAP": str(cap),
        "NAS_RESULTS": str(tmp / "results"),
        "NAS_BENCH_ARGS": (
            f"--device cpu --models {tmp / 'ref.toml'} --batch-size 8 "
            "--steps 2 --warmup 0 --repeats 1 --no-fit --eval-images 6"
        ),
        **env,
    }
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "device_check.sh")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode, out, done.stdout + done.stderr


def leaderboard_in(tarball: Path) -> pd.DataFrame:
    with tarfile.open(tarball) as tar:
        name = next(n for n in tar.getnames() if n.endswith("reference/tiny/leaderboard.csv"))
        f = tar.extractfile(name)
        assert f is not None
        return pd.read_csv(f)


@pytest.mark.slow
def test_dry_run_runs_every_step_and_packs_at_most_8_files(tmp_path: Path) -> None:
    code, out, log = dry_run(tmp_path, cap=300)
    assert code == 0, log
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"device_check.log", "result.tar.gz", "summary.txt"} <= set(files)
    summary = (out / "summary.txt").read_text()
    for step in ("gpu tests", "bench_train", "campaign", "campaign --summarize", "pack"):
        assert f"{step}" in summary
    assert "bench_train: exit 0" in summary and "campaign: exit 0" in summary, summary
    board = leaderboard_in(out / "result.tar.gz")
    assert set(board["source"]) == {"search", "reference"} and set(board["seeds"]) == {2}
    with tarfile.open(out / "result.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("reference/tiny/README.md") for n in names)
    assert any("/bench/train-cpu" in n for n in names)  # the benchmark's JSON
    assert not any(n.endswith(".safetensors") for n in names)  # no weights carried back


@pytest.mark.slow
def test_a_campaign_cut_by_the_cap_leaves_a_readable_leaderboard(tmp_path: Path) -> None:
    # Retraining long enough that the cap lands in it, after the search.
    code, out, log = dry_run(tmp_path, cap=25, retrain="top = 1\nseeds = 2\nepochs = 400")
    assert code == 0, log
    summary = (out / "summary.txt").read_text()
    assert "campaign: exit 124" in summary, summary  # timeout's code for a command it stopped
    assert "campaign --summarize: exit 0" in summary
    board = leaderboard_in(out / "result.tar.gz")  # readable, possibly without rows yet
    assert {"budget", "source", "name", "test_acc_mean"} <= set(board.columns)
    assert "interrupted" in log


@pytest.mark.slow
def test_a_campaign_spans_two_calls_through_the_carried_tarball(tmp_path: Path) -> None:
    retrain = "top = 1\nseeds = 2\nepochs = 120"
    # Call 1: the cap lands in the retraining; the campaign's folders come back packed.
    code, out, log = dry_run(tmp_path, cap=25, retrain=retrain, NAS_STEPS="campaign")
    assert code == 0, log
    carried = out / "campaign-tiny.tar.gz"
    assert carried.is_file(), log
    with tarfile.open(carried) as tar:
        names = tar.getnames()
    assert any(n.endswith("campaigns/tiny/log.json") for n in names)
    assert not any(n.endswith(".safetensors") for n in names)
    # Call 2, on a fresh machine: only the tarball carried in.
    shutil.rmtree(tmp_path / "results")
    (tmp_path / "carry").mkdir()
    shutil.copy(carried, tmp_path / "carry")
    code, out2, log2 = dry_run(
        tmp_path,
        cap=400,
        retrain=retrain,
        out="out2",
        NAS_STEPS="campaign",
        NAS_CARRY_DIR=str(tmp_path / "carry"),
    )
    assert code == 0, log2
    assert "carry-in" in (out2 / "summary.txt").read_text()
    assert "search at 20k: finished in an earlier session" in log2  # not searched again
    board = pd.read_csv(tmp_path / "results" / "reference" / "tiny" / "leaderboard.csv")
    own = board[board["recipe"] == "own"]
    assert set(own["source"]) == {"search", "reference"} and set(own["seeds"]) == {2}
    sessions = json.loads((tmp_path / "results" / "campaigns" / "tiny" / "log.json").read_text())
    assert len(sessions["sessions"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["gpu.toml", "gpu-400k.toml", "gpu-5m.toml"])
def test_the_gpu_presets_run_every_stage_as_a_cpu_dry_run(tmp_path: Path, preset: str) -> None:
    # The committed presets themselves, with their numbers cut down, on tiny images and the CPU:
    # searches, references in the study, race, recipe stage, retraining and the result.
    import tomli_w

    from space._toml import load_toml
    from tests.search.searchkit import tiny_data

    raw = load_toml(ROOT / "configs" / "campaign" / preset)
    raw["search"].update(trials=4, startup_trials=2, race_top=2, race_epochs=1, recipe_trials=2)
    raw["search"].update(recipe_epochs=1, min_epochs=1)
    raw["train"]["epochs"] = 1
    raw["retrain"].update(epochs=1, seeds=2, tta_views=1)
    raw["data"].pop("subset", None)
    raw["data"]["val_size"] = 6
    for b in raw["budgets"]:
        b["timeout"] = 60
    copy = tmp_path / preset
    copy.write_text(tomli_w.dumps(raw))
    data = tiny_data(tmp_path / "data")
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "NAS_DRY_RUN": "1",
        "NAS_PYTHON": sys.executable,
        "NAS_STEPS": "campaign",
        "NAS_CAMPAIGN_CAP": "600",
        "NAS_RESULTS": str(tmp_path / "results"),
        "NAS_CAMPAIGN_ARGS": f"--device cpu --data {data}",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "device_check.sh"), str(copy)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "campaign: exit 0" in summary, log[-3000:]
    name = raw["campaign"].get("name") or copy.stem
    board = pd.read_csv(tmp_path / "results" / "reference" / name / "leaderboard.csv")
    assert set(board["source"]) == {"search", "reference"}
    assert board["race_val_acc"].notna().any()  # the race ran
    assert (tmp_path / "out" / f"campaign-{name}.tar.gz").is_file()  # the carry for a next call
