"""scripts/bench_jobs.py: the aggregate of jobs run together, ratios to one job alone, the MPS
rows where MPS cannot run, and a CPU dry run with one and two worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scripts import load_script, run_script

bench = load_script("bench_jobs")


def test_aggregate_counts_all_images_over_the_span_from_first_start_to_last_end() -> None:
    timings = [
        bench.JobTiming(started=10.0, ended=12.0, images=1000, images_per_s=500.0),
        bench.JobTiming(started=10.5, ended=14.0, images=1000, images_per_s=1000 / 3.5),
    ]
    total, per_job, slowest, span, skew = bench.aggregate(timings)
    assert span == 4.0 and skew == 0.5
    assert total == 2000 / 4.0
    assert per_job == pytest.approx((500 + 1000 / 3.5) / 2)
    assert slowest == pytest.approx(1000 / 3.5)
    with pytest.raises(ValueError):
        bench.aggregate([])


def test_ratios_are_to_one_plain_job_and_absent_without_one() -> None:
    rows = [
        bench.Row("processes", 1, "ok", aggregate_images_per_s=100.0),
        bench.Row("processes", 2, "ok", aggregate_images_per_s=150.0),
        bench.Row("mps", 2, "ok", aggregate_images_per_s=180.0),
        bench.Row("mps", 4, "unavailable"),
    ]
    assert [r.ratio for r in bench.with_ratios(rows)] == [1.0, 1.5, 1.8, None]
    assert [r.ratio for r in bench.with_ratios(rows[1:])] == [None, None, None]


def test_without_the_mps_control_program_the_mps_rows_say_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-cuda-mps-control on it
    ran = []

    def measure(s: object, sharing: str) -> tuple[list[object], list[object]]:
        ran.append(sharing)  # the workers themselves need a GPU; the wiring is under test
        return [bench.Row(sharing, n, "ok", aggregate_images_per_s=1.0) for n in (1, 2)], []

    monkeypatch.setattr(bench, "measure", measure)
    s = bench.resolve(["--device", "cuda", "--jobs", "1", "2", "--mps"])
    rows, _, state = bench.measure_all(s)
    assert ran == ["processes"] and state == "unavailable"
    assert [(r.sharing, r.jobs, r.state) for r in rows] == [
        ("processes", 1, "ok"),
        ("processes", 2, "ok"),
        ("mps", 1, "unavailable"),
        ("mps", 2, "unavailable"),
    ]


@pytest.mark.slow
def test_dry_run_on_cpu_with_one_and_two_workers(tmp_path: Path) -> None:
    done = run_script(
        "bench_jobs",
        "--device", "cpu", "--jobs", "1", "2", "--steps", "2", "--batch-size", "4", "--mps",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for header in ("sharing", "jobs", "agg img/s", "per job", "x one"):
        assert header in out
    (path,) = tmp_path.glob("jobs-cpu-*.json")
    record = json.loads(path.read_text())
    rows = {(r["sharing"], r["jobs"]): r for r in record["rows"]}
    assert set(rows) == {("processes", 1), ("processes", 2), ("mps", 1), ("mps", 2)}
    for n in (1, 2):
        r = rows["processes", n]
        assert r["state"] == "ok" and r["aggregate_images_per_s"] > 0
        assert r["per_job_images_per_s"] > 0 and r["ratio"] > 0
        assert rows["mps", n]["state"] == "n/a on cpu" and rows["mps", n]["ratio"] is None
    assert rows["processes", 1]["ratio"] == 1.0
    assert record["mps"] == "n/a on cpu"
    # Each of N workers trained with cores // N threads.
    workers = {run["jobs"]: run["workers"] for run in record["workers"]}
    cores = record["cpu_count"]
    assert [w["threads"] for w in workers[2]] == [max(1, cores // 2)] * 2
    assert all(w["timing"]["images"] == 2 * 4 for w in workers[2])
