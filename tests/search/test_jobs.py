"""search.jobs: trainings side by side end with the weights a serial run gives, start longest
first, and a stopped run resumes to the same result."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from search import jobs as jobs_module
from search.config import DataConfig
from search.experiment import Experiment
from search.jobs import DatasetCache, Job, run_jobs
from search.training import EpochStats, TrainConfig
from space import Genotype
from tests.search.searchkit import REFERENCE, tiny_data

WIDE = REFERENCE.replace("width = 16", "width = 32")


def make_jobs(tmp: Path, out: str, *, epochs: int = 2) -> list[Job]:
    if not (tmp / "data").exists():
        tiny_data(tmp / "data")
    data = DataConfig(source=str(tmp / "data"), val_size=6)
    jobs = []
    for name, text in (("small", REFERENCE), ("wide", WIDE)):
        (tmp / f"{name}.toml").write_text(text)
        g = Genotype.load(tmp / f"{name}.toml")
        for seed in (0, 1):
            train = TrainConfig(epochs=epochs, batch_size=8, lr=0.05, tta_views=1, seed=seed)
            experiment = Experiment(name=name, genotype=g, data=data, train=train, test=False)
            jobs.append(Job(experiment, tmp / out / name / f"seed-{seed}"))
    return jobs


def weights(folder: Path) -> dict[str, bytes]:
    """Every tensor's bytes (the file's metadata holds times, which differ)."""
    tensors = load_file(folder / "model.safetensors")
    return {k: v.numpy().tobytes() for k, v in tensors.items()}


@pytest.mark.slow
def test_side_by_side_ends_with_the_serial_weights(tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    serial = run_jobs(make_jobs(tmp_path, "serial"), device=cpu, progress=False)
    # Two worker processes of one thread each (this process runs one thread too: conftest).
    both = run_jobs(make_jobs(tmp_path, "both"), device=cpu, concurrency=2, progress=False)
    assert [o.ok for o in serial + both] == [True] * 8
    for a, b in zip(serial, both, strict=True):
        assert a.metrics["val_acc"] == b.metrics["val_acc"]  # type: ignore[index]
        assert weights(a.job.out) == weights(b.job.out)  # bit for bit
    assert [o.job.out.parent.name for o in both] == ["small", "small", "wide", "wide"]


def test_longest_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[str] = []

    def fake_pool(jobs, order, device, concurrency, view, finish, stop):  # type: ignore[no-untyped-def]
        started.extend(jobs[i].experiment.name for i in order)
        for i in order:
            finish(i, jobs_module.Outcome(jobs[i], error="not trained"))

    monkeypatch.setattr(jobs_module, "_run_pool", fake_pool)
    outcomes = run_jobs(
        make_jobs(tmp_path, "x"), device=torch.device("cpu"), concurrency=2, progress=False
    )
    assert started == ["wide", "wide", "small", "small"]  # wider: more MACs
    assert [o.job.experiment.name for o in outcomes] == ["small", "small", "wide", "wide"]


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    whole = run_jobs(make_jobs(tmp_path, "whole", epochs=3), device=cpu, progress=False)
    stop = threading.Event()
    seen: list[int] = []

    def on_done(outcome: jobs_module.Outcome) -> None:
        seen.append(1)
        stop.set()  # stop at the next step: the second job is cut in its first epoch

    cut = make_jobs(tmp_path, "cut", epochs=3)
    with pytest.raises(KeyboardInterrupt):
        run_jobs(cut, device=cpu, progress=False, on_done=on_done, stop=stop)
    assert len(seen) == 1 and (cut[0].out / "metrics.json").exists()
    assert not (cut[1].out / "metrics.json").exists()
    resumed = run_jobs(cut, device=cpu, progress=False)
    for a, b in zip(whole, resumed, strict=True):
        assert weights(a.job.out) == weights(b.job.out)


def test_a_diverged_job_is_an_outcome_not_an_exception(tmp_path: Path) -> None:
    jobs = make_jobs(tmp_path, "nan")[:1]
    e = jobs[0].experiment
    hot = Experiment(
        name=e.name,
        genotype=e.genotype,
        data=e.data,
        train=TrainConfig(epochs=1, batch_size=8, lr=1e30, tta_views=1),
        test=False,
    )
    [outcome] = run_jobs([Job(hot, jobs[0].out)], device=torch.device("cpu"), progress=False)
    assert not outcome.ok and outcome.error.startswith("diverged")  # type: ignore[union-attr]


def test_progress_counts_every_epoch_of_every_job(tmp_path: Path) -> None:
    epochs: list[EpochStats] = []
    cache = DatasetCache()
    jobs = make_jobs(tmp_path, "p")[:2]
    outcomes = run_jobs(jobs, datasets=cache, device=torch.device("cpu"), progress=False)
    assert all(o.ok for o in outcomes)
    assert len(cache._loaded) == 1  # one decode and split for both
    del epochs


@pytest.mark.slow
def test_a_stop_reaches_trainings_side_by_side(tmp_path: Path) -> None:
    # The signal handler of search.run only sets an event: the pool must read it.
    stop = threading.Event()
    timer = threading.Timer(8.0, stop.set)  # after the workers have started
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_jobs(
                make_jobs(tmp_path, "stop", epochs=500),
                device=torch.device("cpu"),
                concurrency=2,
                progress=False,
                stop=stop,
            )
    finally:
        timer.cancel()
    assert not list((tmp_path / "stop").rglob("metrics.json"))
