"""The study's Pareto figure and summary note in optuna-dashboard, kept current while it runs.

A user who opens optuna-dashboard during a search sees the front so far: the search publishes
the figure and the note that ``python -m search.report`` puts there (``search.report.publish``)
every few finished trials, and once more when it ends or is interrupted. Only the process that
reports to the user publishes (the supervisor under ``--workers``), so workers never contend
for it.

How often: publishing costs a read of every trial and a write of the figure, which grow with the
study (measured on a 2-core CPU: 0.2 s on SQLite and 0.03 s on a journal at 20 trials, 1 s and
0.45 s at 1,000). After each publish the next one waits until the search has run ``1 / SHARE``
times that cost, so publishing takes at most ``SHARE`` of the search's time whatever the study's
size and the trials' length: with 2-second CPU trials that is every few trials, with GPU trials
of minutes after every trial. A journal file keeps every figure it was given (about 10 kB plus
0.2 kB a trial), so on a journal the next publish also waits until the trials have added at
least as many bytes as the last figure and note took: figures stay under half of the file.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna

SHARE = 0.02  # the most of the search's wall time that publishing may take


def publish_front(study: optuna.Study, *, ended: bool = False) -> None:
    """Put the study's Pareto figure and summary note where optuna-dashboard shows them."""
    from search.figures import StudyView, accuracy_figure
    from search.report import note_markdown, publish

    view = StudyView.of(study)
    when = "when it stopped" if ended else "while it runs"
    note = note_markdown(view, written_by=f"python -m search.run, {when}")
    publish(study, accuracy_figure([view], measure="params"), note)


class LiveFront:
    """Publishes a running study's Pareto figure and note, at most ``share`` of the time."""

    def __init__(
        self,
        study: optuna.Study,
        *,
        share: float = SHARE,
        journal: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        publisher: Callable[[optuna.Study], None] | None = None,
    ) -> None:
        self.study = study
        self.ended = False  # finish() was called: the note no longer says "while it runs"
        self.publisher = publisher or (lambda s: publish_front(s, ended=self.ended))
        self.share = share
        self.journal = journal  # the study's journal file, when it is stored in one
        self.clock = clock
        self.published = 0  # how many times
        self.seconds = 0.0  # spent publishing, in all
        self._cost: float | None = None  # seconds the last publish took
        self._last_end = clock()
        self._size_after = 0  # bytes of the journal after the last publish
        self._bytes = 0  # bytes the last publish added to the journal
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
        if (self.clock() - self._last_end) * self.share < self._cost:
            return False
        return self.journal is None or self._journal_size() - self._size_after >= self._bytes

    def finish(self) -> None:
        """Call when the search ends or is interrupted: publishes what it has not yet."""
        self.ended = True
        if self._pending or self.published == 0:
            self.publish()

    def publish(self) -> None:
        """Publish now. A failure is reported once and never stops the search."""
        started = self.clock()
        size_before = self._journal_size()
        try:
            self.publisher(self.study)
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
            self._size_after = self._journal_size()
            self._bytes = self._size_after - size_before
            self._cost = self._last_end - started
            self.seconds += self._cost
            self.published += 1
            self._pending = False

    def _journal_size(self) -> int:
        if self.journal is None:
            return 0
        try:
            return os.path.getsize(self.journal)
        except OSError:
            return 0
