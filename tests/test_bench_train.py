"""scripts/bench_train.py --modes: the agreement check and the cuda_graph rule, and a CPU dry
run end to end (only eager runs there; the graph rows say so)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.scripts import load_script, run_script

bench = load_script("bench_train")


def row(mode: str, images_per_s: float | None, agrees: bool | None = True) -> object:
    return bench.ModeRow(
        model="m",
        mode=mode,
        images_per_s=images_per_s,
        seconds_per_step=None,
        speedup=None,
        setup_seconds=None,
        agrees=agrees,
        max_loss_difference=None,
        note="",
    )


def test_losses_agree_within_the_relative_tolerance_of_each_step() -> None:
    reference = [2.30, 2.00, 1.00]
    assert bench.loss_agreement(reference, reference) == (True, 0.0)
    # 1.5% off at the last step: within 2%; the difference reported is the largest one.
    agree, worst = bench.loss_agreement(reference, [2.30, 2.01, 1.015], rtol=0.02)
    assert agree and worst == pytest.approx(0.015)
    # 2.5% off at a step whose loss is small, though the absolute difference is smaller than
    # an agreeing one of a larger loss: the rule is relative to each step's loss.
    agree, worst = bench.loss_agreement([2.30, 1.00], [2.33, 1.025], rtol=0.02)
    assert not agree and worst == pytest.approx(0.03)


def test_a_non_finite_loss_never_agrees_and_lengths_must_match() -> None:
    agree, worst = bench.loss_agreement([2.3, 2.2], [2.3, math.nan])
    assert not agree and math.isinf(worst)
    with pytest.raises(ValueError, match="same nonzero length"):
        bench.loss_agreement([2.3, 2.2], [2.3])
    with pytest.raises(ValueError, match="same nonzero length"):
        bench.loss_agreement([], [])


def test_graphs_go_on_only_where_they_agree_and_are_faster() -> None:
    eager = row("eager", 1000.0)
    assert bench.recommend_cuda_graph(eager, row("cuda_graph", 1500.0)) == "on"
    assert bench.recommend_cuda_graph(eager, row("cuda_graph", 1500.0, agrees=False)) == "off"
    assert bench.recommend_cuda_graph(eager, row("cuda_graph", 1030.0)) == "off"  # < 5% gain
    assert bench.recommend_cuda_graph(eager, row("cuda_graph", 1030.0), min_gain=0.02) == "on"
    assert bench.recommend_cuda_graph(eager, row("cuda_graph", 900.0)) == "off"
    assert bench.recommend_cuda_graph(eager, row("cuda_graph", None, agrees=None)) == "n/a"
    assert bench.recommend_cuda_graph(eager, None) == "n/a"


def test_one_default_from_the_models_recommendations() -> None:
    assert bench.default_cuda_graph({"a": "on", "b": "on"}) == "on"
    assert bench.default_cuda_graph({"a": "off", "b": "n/a"}) == "off"
    assert bench.default_cuda_graph({"a": "on", "b": "off"}) == "mixed"
    assert bench.default_cuda_graph({"a": "n/a"}) == "n/a"


def test_modes_come_in_a_fixed_order_with_eager_first() -> None:
    assert bench.comparison_modes([]) == bench.MODES
    assert bench.comparison_modes(["reduce-overhead", "compile"]) == (
        "eager",
        "compile",
        "reduce-overhead",
    )


@pytest.mark.slow
def test_modes_dry_run_on_cpu_times_eager_and_marks_the_graph_modes_na(tmp_path: Path) -> None:
    done = run_script(
        "bench_train",
        "--device", "cpu", "--modes", "--models", "resnet20", "--batch-size", "4",
        "--steps", "1", "--repeats", "1", "--check-steps", "2", "--out", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for header in ("model", "mode", "img/s", "ms/step", "x eager", "agrees", "max dloss"):
        assert header in out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("  resnet20 ")}
    assert set(lines) == {"eager", "cuda_graph", "reduce-overhead"}
    assert "n/a on cpu" in lines["cuda_graph"] and "n/a on cpu" in lines["reduce-overhead"]
    assert "=> resnet20: cuda_graph: n/a" in out

    (path,) = tmp_path.glob("train-cpu-*.json")
    record = json.loads(path.read_text())
    comparison = record["mode_comparison"]
    assert comparison["modes"] == ["eager", "cuda_graph", "reduce-overhead"]
    assert comparison["cuda_graph_default"] == "n/a"
    (model,) = comparison["models"]
    assert model["cuda_graph"] == "n/a" and len(model["loss_reference"]) == 2
    rows = {r["mode"]: r for r in model["rows"]}
    assert rows["eager"]["images_per_s"] > 0 and rows["eager"]["speedup"] == 1.0
    # fp32 on one thread: a second eager run repeats the first exactly.
    assert rows["eager"]["agrees"] is True and rows["eager"]["max_loss_difference"] == 0.0
    for mode in ("cuda_graph", "reduce-overhead"):
        assert rows[mode]["note"] == "n/a on cpu" and rows[mode]["images_per_s"] is None
    assert record["models"] == [] and record["settings"]["modes"] == list(comparison["modes"])


def test_compile_and_modes_together_are_a_user_error() -> None:
    with pytest.raises(bench.UserError, match="--compile and --modes"):
        bench.resolve(["--device", "cpu", "--modes", "--compile"])
