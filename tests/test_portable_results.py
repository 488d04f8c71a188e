"""Committed results name no folder of the machine that made them: scripts/portable_results.py
rewrites a result that does, and every committed result is checked for absolute paths."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sqlite3
from pathlib import Path
from types import ModuleType

import optuna
import pytest

from tests.conftest import ROOT

RESULTS = ROOT / "results" / "reference"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "portable_results", ROOT / "scripts" / "portable_results.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


portable_results = _script()


def _trials(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(
            "SELECT * FROM trials JOIN trial_values USING (trial_id) ORDER BY trial_id"
        ).fetchall()


def test_a_result_with_absolute_paths_is_rewritten_once_and_for_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cpu-400k"
    shutil.copytree(RESULTS / "cpu-400k", out)
    # Plant what a campaign run as `python -m search.campaign --results /tmp/... --out /tmp/...`
    # from a checkout in /home/me/budget-nas recorded before results were made portable.
    command = (
        "python /home/me/budget-nas/search/campaign.py --config configs/campaign/cpu-400k.toml "
        "--results /tmp/runs/results --out /tmp/runs/out --no-progress"
    )
    record = json.loads((out / "campaign.json").read_text())
    record["sessions"][0]["command"] = command
    (out / "campaign.json").write_text(json.dumps(record, indent=2) + "\n")
    db = out / "cpu-400k.db"
    study = optuna.load_study(study_name="cpu-400k", storage=f"sqlite:///{db}")
    dataset = study.user_attrs["dataset"]
    study.set_user_attr("dataset", {**dataset, "source": "/home/me/budget-nas/data/cifar10-jpeg"})
    study.set_user_attr("command", command)
    study.set_user_attr("artifact_dir", "/tmp/runs/results/campaigns/cpu-400k/cpu-400k/artifacts")
    del study
    readme = (out / "README.md").read_text()
    (out / "README.md").write_text(readme + f"\nSee {ROOT}/configs and /home/me/other/x.\n")
    trials = _trials(db)

    # One path no rule covers: named, exit 1; everything else is rewritten already.
    assert portable_results.main([str(out)]) == 1
    err = capsys.readouterr().err
    assert "/home/me/other/x" in err and len(err.strip().splitlines()) == 1
    assert portable_results.main([str(out), "--map", "/home/me/other=elsewhere"]) == 0
    assert portable_results.absolute_paths(out) == []

    record = json.loads((out / "campaign.json").read_text())
    assert record["sessions"][0]["command"] == (
        "python -m search.campaign --config configs/campaign/cpu-400k.toml --results results "
        "--out results/reference/cpu-400k --no-progress"
    )
    study = optuna.load_study(study_name="cpu-400k", storage=f"sqlite:///{db}")
    assert study.user_attrs["dataset"] == {**dataset, "source": "data/cifar10-jpeg"}
    assert study.user_attrs["command"] == record["sessions"][0]["command"]
    assert study.user_attrs["artifact_dir"] == "results/campaigns/cpu-400k/cpu-400k/artifacts"
    assert (out / "README.md").read_text() == readme + "\nSee configs and elsewhere/x.\n"
    assert _trials(db) == trials  # the trials themselves untouched
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    # A second run changes nothing, byte for byte.
    before = {p: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert portable_results.main([str(out)]) == 0
    assert "rewrote" not in capsys.readouterr().out
    assert {p: p.read_bytes() for p in out.iterdir()} == before


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        portable_results.main([str(tmp_path / "missing")])
    assert stop.value.code == 2
    with pytest.raises(SystemExit) as stop:
        portable_results.main([str(tmp_path), "--map", "relative=results"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no such result folder" in err[0] and "--map" in err[1]


# Named reference/<folder>: a test id "gpu" would read as the gpu marker and be skipped.
@pytest.mark.parametrize(
    "folder",
    sorted(p.name for p in RESULTS.iterdir() if p.is_dir()),
    ids=lambda name: f"reference/{name}",
)
def test_committed_results_hold_no_absolute_path(folder: str) -> None:
    # Text files and the study databases' attributes: /work/, /root/, /home/, /tmp/, /Users/.
    assert portable_results.absolute_paths(RESULTS / folder) == []


def test_the_scan_finds_an_absolute_path_wherever_it_is(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.md").write_text("made in /root/nas/results\n")
    (tmp_path / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff/root/not-text")
    db = tmp_path / "s.db"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{db}")
    study.set_user_attr("note", "see /work/main/results")
    study.set_user_attr("url", "https://example.org/home/page")  # a URL is not a path
    found = portable_results.absolute_paths(tmp_path)
    assert [line.rsplit(": ", 1)[1] for line in found] == [
        "/work/main/results",
        "/root/nas/results",
    ]
