"""search.fidelity: rank statistics against scipy, and the command on tiny generated images
(results, resume, bad presets refused with one line and nothing written)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from scipy import stats

from search import fidelity
from tests.search.searchkit import REFERENCE, tiny_data, tiny_space


def _pairs(seed: int, n: int, ties: bool) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    x = [rng.random() for _ in range(n)]
    y = [a + rng.gauss(0, 0.3) for a in x]
    if ties:  # accuracies on a few hundred images tie often
        x = [round(a, 1) for a in x]
        y = [round(b, 1) for b in y]
    return x, y


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ties", [False, True])
def test_spearman_and_kendall_match_scipy(seed: int, ties: bool) -> None:
    x, y = _pairs(seed, 5 + 3 * seed, ties)
    assert fidelity.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert fidelity.kendall(x, y) == pytest.approx(
        stats.kendalltau(x, y, variant="b").statistic, abs=1e-12
    )


def test_constant_sides_give_nan_not_an_error() -> None:
    assert math.isnan(fidelity.spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(fidelity.kendall([1, 2, 3], [5, 5, 5]))


def test_top_overlap_counts_the_shared_best() -> None:
    short = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    long = [0.1, 0.8, 0.7, 0.6, 0.5, 0.95, 0.3]  # the short's best is the long's worst
    assert fidelity.top_overlap(short, long, k=5) == 4
    assert fidelity.top_overlap(short, short, k=5) == 5
    assert fidelity.top_overlap(short, [-v for v in short], k=3) == 0


def test_bootstrap_interval_brackets_rho_and_is_seeded() -> None:
    x, y = _pairs(3, 16, ties=False)
    _, z = _pairs(4, 16, ties=False)
    low, high = fidelity.bootstrap_interval(x, [y, z], reps=500, seed=1)
    assert low <= fidelity.against_seeds(x, [y, z], fidelity.spearman) <= high
    assert (low, high) == fidelity.bootstrap_interval(x, [y, z], reps=500, seed=1)
    assert high - low > 0.01  # 16 points cannot pin rho down


def test_short_settings_are_weighed_seed_by_seed_as_the_ceiling_is() -> None:
    # The ceiling sets one long training against another; a short setting is set against one
    # long training at a time too, else the mean of two seeds (less noisy) could pass it.
    a, b = [0.1, 0.4, 0.2, 0.5, 0.3], [0.2, 0.3, 0.1, 0.5, 0.4]
    short = [0.15, 0.35, 0.2, 0.5, 0.3]
    assert fidelity.against_seeds(short, [a, b], fidelity.spearman) == pytest.approx(
        (fidelity.spearman(short, a) + fidelity.spearman(short, b)) / 2
    )
    assert fidelity.seed_to_seed([a, b], fidelity.spearman) == fidelity.spearman(a, b)
    c = [0.3, 0.1, 0.2, 0.4, 0.5]
    assert fidelity.seed_to_seed([a, b, c], fidelity.kendall) == pytest.approx(
        (fidelity.kendall(a, b) + fidelity.kendall(a, c) + fidelity.kendall(b, c)) / 3
    )


def test_tied_accuracies_do_not_count_as_agreement() -> None:
    # All tied on both sides: any top 5 is as good as another; breaking ties by position on
    # both sides would call it a perfect overlap.
    flat = [0.5] * 10
    assert fidelity.top_overlap(flat, flat, k=5) < 5


# -- the command ------------------------------------------------------------------------------


def preset(tmp: Path, **changes: str) -> Path:
    if not (tmp / "data").exists():
        tiny_data(tmp / "data")
        tiny_space(tmp / "space.toml")
        (tmp / "ref.toml").write_text(REFERENCE)
    tables = {
        "fidelity": (
            f'budget = "20k"\nspace = "{tmp / "space.toml"}"\narchitectures = 3\n'
            f'references = ["{tmp / "ref.toml"}"]\ndevice = "cpu"\ndefault = "trial@2"'
        ),
        "data": f'source = "{tmp / "data"}"\nval_size = 6',
        "train": "batch_size = 8\nlr = 0.05\ntta_views = 1",
        "long": "epochs = 3\nseeds = 2",
        **changes,
    }
    text = "".join(f"[{k}]\n{v}\n" for k, v in tables.items())
    text += (
        '[[short]]\nname = "trial"\nepochs = 2\nreads = [1, 2]\n'
        '[[short]]\nname = "small"\nepochs = 2\nimage_size = 4\n'
        '[[short]]\nname = "narrow"\nepochs = 2\nwidth = 0.5\n'
    )
    path = tmp / "tiny.toml"
    path.write_text(text)
    return path


def run(tmp: Path, config: Path, *extra: str) -> int:
    return fidelity.main(
        ["--config", str(config), "--results", str(tmp / "results"), "--no-progress", *extra]
    )


@pytest.mark.slow
def test_measures_every_setting_writes_the_result_and_resumes(tmp_path: Path) -> None:
    config = preset(tmp_path)
    assert run(tmp_path, config) == 0
    out = tmp_path / "results" / "reference" / "tiny"
    result = json.loads((out / "fidelity.json").read_text())
    assert result["architectures"] == 4  # 3 drawn + 1 reference
    assert result["default"] == "trial@2"
    assert set(result["long"]) >= {"ceiling_spearman", "epochs", "seeds"}
    names = [s["name"] for s in result["short"]]
    assert names == ["trial@1", "trial@2", "small", "narrow"]
    for s in result["short"]:
        assert set(s) >= {"name", "spearman", "kendall", "top5_overlap", "cost_epochs"}
    costs = {s["name"]: s["cost_epochs"] for s in result["short"]}
    assert costs["trial@1"] == pytest.approx(1.0) and costs["trial@2"] == pytest.approx(2.0)
    assert 0 < costs["small"] < 2 and 0 < costs["narrow"] < 2  # cheaper models
    rows = (out / "fidelity.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * (2 + 4)  # header; per architecture 2 long seeds + 4 reads
    assert "test" not in (out / "fidelity.csv").read_text().split("\n")[0]
    runs = sorted((tmp_path / "results" / "fidelity" / "tiny" / "runs").rglob("metrics.json"))
    assert len(runs) == 4 * (2 + 3)
    assert all("test_acc" not in json.loads(p.read_text()) for p in runs)  # never the test split
    stamps = [p.stat().st_mtime_ns for p in runs]
    assert run(tmp_path, config) == 0  # all finished: trains nothing, rewrites the result
    assert [p.stat().st_mtime_ns for p in runs] == stamps
    assert "Spearman" in (out / "README.md").read_text()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"fidelity": 'budget = "20k"\ncolour = "red"'}, "unknown key 'colour'"),
        ({"long": "epochs = 3\nseeds = 1"}, "seeds must be >= 2"),
        ({"fidelity": 'budget = "20k"\ndefault = "nope"'}, "default 'nope' names no short"),
        ({"train": "batch_size = 8\nepochs = 3"}, "epochs is set per setting"),
        ({"data": 'source = "/no/such/folder"\nval_size = 6'}, "no such file or folder"),
        ({"data": 'source = "x"\nval_size = 0'}, "val_size must be >= 1"),
    ],
)
def test_bad_presets_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, str], message: str
) -> None:
    config = preset(tmp_path)
    tables = {
        "fidelity": 'budget = "20k"',
        "data": f'source = "{tmp_path / "data"}"\nval_size = 6',
        "train": "batch_size = 8",
        "long": "epochs = 3\nseeds = 2",
        **changes,
    }
    text = "".join(f"[{k}]\n{v}\n" for k, v in tables.items())
    config.write_text(text + '[[short]]\nname = "trial"\nepochs = 2\n')
    assert run(tmp_path, config) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "results").exists()


def test_summarize_without_a_measurement_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path, preset(tmp_path), "--summarize") == 2
    assert "nothing to summarize" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_committed_cpu_preset_reads_and_names_the_search_default() -> None:
    from tests.conftest import ROOT

    plan = fidelity.load_plan(ROOT / "configs" / "fidelity" / "cpu-400k.toml")
    names = [n for s in plan.shorts for n in s.read_names]
    assert plan.config.default in names
    assert plan.long.epochs >= 4 * 8  # at least 4x the CPU search's 8-epoch trial
    assert plan.config.architectures + len(plan.references) >= 16
