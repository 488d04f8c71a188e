"""The study's Pareto figure and summary note in optuna-dashboard, kept current while it runs.

A user who opens optuna-dashboard during a search sees the front so far: the search publishes
the figure and the note that ``python -m search.report`` puts there (``search.report.publish``)
every few finished trials, and once more when it ends or is interrupted. Only the process that
reports to the user publishes (the supervisor under ``--workers``), so workers never contend
for it.

How often: publishing costs a read of every trial and a write of the figure, which grow with the
study. After each publish the next one waits until the search has run ``1 / SHARE`` times that
cost, so publishing takes at most ``SHARE`` of the search's time whatever the study's size and
the trials' length: with 2-second CPU trials that is every few trials, with GPU trials of
minutes after every trial.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import optuna

SHARE = 0.02  # the most of the search's wall time that publishing may take


class LiveFront:
    """Publishes a running study's Pareto figure and note, at most ``share`` of the time."""

    def __init__(
        self,
        study: optuna.Study,
        *,
        share: float = SHARE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.study = study
        self.share = share
        self.clock = clock
        self.published = 0  # how many times
        self.seconds = 0.0  # spent publishing, in all
        self._cost: float | None = None  # seconds the last publish took
        self._last_end = clock()
        self._pending = False  # a trial finished since the last publish
        self._failed = False

    def trial_finished(self) -> None:
        """Call after each finished trial; publishes when it is due."""
        self._pending = True
        if self._due():
            self.publish()

    def _due(self) -> bool:
        if self._cost is None:
            return True  # the first one measures the cost
        return (self.clock() - self._last_end) * self.share >= self._cost

    def finish(self) -> None:
        """Call when the search ends or is interrupted: publishes what it has not yet."""
        if self._pending or self.published == 0:
            self.publish()

    def publish(self) -> None:
        """Publish now. A failure is reported once and never stops the search."""
        from search.figures import StudyView, accuracy_figure
        from search.report import note_markdown, publish

        started = self.clock()
        try:
            view = StudyView.of(self.study)
            note = note_markdown(view, written_by="python -m search.run, while it runs")
            publish(self.study, accuracy_figure([view], measure="params"), note)
        except Exception as exc:  # a figure must not stop a search; search.report redoes it
            if not self._failed:
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                print(
                    f"dashboard figure not updated ({type(exc).__name__}: {first})",
                    file=sys.stderr,
                )
            self._failed = True
        finally:
            self._last_end = self.clock()
            self._cost = self._last_end - started
            self.seconds += self._cost
            self.published += 1
            self._pending = False
