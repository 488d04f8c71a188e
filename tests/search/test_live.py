"""The Pareto figure and note in optuna-dashboard while a search runs: how often they are
published (at most 2% of the search's time, and on a journal no more bytes than the trials
add), and that a search leaves them in the study."""

from __future__ import annotations

from pathlib import Path

import optuna
import optuna_dashboard
import pytest
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

from search.live import LiveFront
from search.report import GRAPH_OBJECT_ID
from search.run import main as run_main
from tests.search.searchkit import search_args


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(
    front: LiveFront, clock: FakeClock, *, trials: int, trial_seconds: float
) -> list[float]:
    """Trials finishing one after another; returns when each publish happened."""
    when: list[float] = []
    real = front.publisher

    def timed(study: optuna.Study) -> None:
        when.append(clock.now)
        real(study)

    front.publisher = timed
    for _ in range(trials):
        clock.now += trial_seconds
        front.trial_finished()
    front.finish()
    return when


@pytest.mark.parametrize(
    ("trial_seconds", "cost"),
    [(2.0, 0.2), (2.0, lambda n: 0.02 + 0.001 * n), (300.0, 1.0), (0.5, 3.0)],
    ids=["cpu-trials", "cost-grows-with-the-study", "gpu-trials", "publish-dearer-than-trials"],
)
def test_publishing_takes_at_most_two_percent_of_the_time(trial_seconds, cost) -> None:
    clock = FakeClock()
    calls = []

    def publisher(study: optuna.Study) -> None:
        calls.append(clock.now)
        clock.now += cost(len(calls)) if callable(cost) else cost

    front = LiveFront(None, clock=clock, publisher=publisher)  # type: ignore[arg-type]
    simulate(front, clock, trials=2000, trial_seconds=trial_seconds)
    first = cost(1) if callable(cost) else cost
    last = cost(len(calls)) if callable(cost) else cost
    # The first publish measures the cost, the last one comes at the end: the rest keep to 2%.
    assert front.seconds - first - last <= 0.02 * clock.now
    assert len(calls) >= 3
    if trial_seconds * 0.02 >= last:  # trials long enough: a publish after every one
        assert len(calls) == 2000


def test_on_a_journal_figures_take_no_more_bytes_than_the_trials(tmp_path: Path) -> None:
    journal = tmp_path / "s.journal"
    journal.write_bytes(b"")
    clock = FakeClock()

    def publisher(study: optuna.Study) -> None:
        with open(journal, "ab") as f:  # a figure of 10 kB, plus 200 bytes a trial so far
            f.write(b"f" * (10_000 + 200 * trials_done[0]))

    trials_done = [0]
    front = LiveFront(None, clock=clock, journal=journal, publisher=publisher)  # type: ignore[arg-type]
    for _ in range(500):
        clock.now += 600.0  # long trials: time never holds a publish back
        with open(journal, "ab") as f:
            f.write(b"t" * 8_000)  # what a trial writes
        trials_done[0] += 1
        front.trial_finished()
    data = journal.read_bytes()
    assert data.count(b"f") <= data.count(b"t") + 10_000 + 200 * 500
    assert front.published >= 20  # and still kept current


def test_a_failing_publish_is_said_once_and_never_stops(capsys) -> None:
    def broken(study: optuna.Study) -> None:
        raise RuntimeError("storage hiccup")

    front = LiveFront(None, publisher=broken, share=1.0)  # type: ignore[arg-type]
    for _ in range(3):
        front.trial_finished()
    front.finish()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dashboard figure not updated (RuntimeError: storage hiccup)"]


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_search_leaves_the_figure_and_note_for_optuna_dashboard(
    tmp_path: Path, monkeypatch, kind: str
) -> None:
    monkeypatch.chdir(tmp_path)
    extra = ["--storage", "journal:///results/tiny.journal"] if kind == "journal" else []
    assert run_main(search_args(tmp_path, *extra, trials=3)) == 0
    url = "sqlite:///results/tiny.db" if kind == "sqlite" else None
    storage = url or optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend("results/tiny.journal")
    )
    study = optuna.load_study(study_name="tiny", storage=storage)
    # What optuna-dashboard's server reads for the study's custom plots.
    plots = get_plotly_graph_objects(study._storage.get_study_system_attrs(study._study_id))
    assert GRAPH_OBJECT_ID in plots
    assert '"Pareto front' in plots[GRAPH_OBJECT_ID]
    note = optuna_dashboard.get_note(study)
    assert "## tiny" in note and "trials** 3" in note
    assert "python -m search.run" in note
