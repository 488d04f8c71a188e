"""Faults: kills, concurrent workers, diverging and out-of-memory trials, Ctrl-C.

Nothing a user computed may be lost: after any kill the same command resumes, every trial that
finished before the kill is still there with its value and attributes, none is duplicated, a
trial left running is failed (and retried once), and the study ends with the requested count.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import torch
from optuna.trial import TrialState

import search.study
from search.checkpoint import load_model
from search.run import main as run_main
from tests.search.searchkit import search_args

pytestmark = pytest.mark.slow
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# Each script below patches the process, then runs search.run in it (see ``with_search``).
def with_search(hook: str) -> str:
    """A ``python -c`` program: the imports the hooks share, ``hook``, then search.run."""
    return (
        f"import os, runpy, signal, sys\n{hook}\n"
        'sys.argv[0] = "search.run"\nrunpy.run_module("search.run", run_name="__main__")\n'
    )


# Runs search.run with Trial.set_user_attr patched to SIGKILL the process halfway through
# writing a trained trial's results (after "train_seconds", before "train_loss" and the value).
_DIE_WRITING_RESULTS = """
import optuna
real = optuna.trial.Trial.set_user_attr
def dying(self, key, value):
    if key == "train_loss":
        os.kill(os.getpid(), signal.SIGKILL)
    real(self, key, value)
optuna.trial.Trial.set_user_attr = dying
"""


# Runs search.run with Trial.report patched to SIGKILL the process right after a trial from the
# second on stored its first validation accuracy: killed mid-trial, at a moment a poll from
# outside could miss on a loaded machine (a tiny trial is that state for a fraction of a second).
_DIE_MID_TRIAL = """
import optuna
real = optuna.trial.Trial.report
def dying(self, value, step):
    real(self, value, step)
    if self.number >= 1:
        os.kill(os.getpid(), signal.SIGKILL)
optuna.trial.Trial.report = dying
"""


def ctrl_c_mid_trial(times: int = 1) -> str:
    """A hook for ``start``: Trial.report patched to send the process ``times`` SIGINTs (Ctrl-C)
    right after trial 0 stored its first validation accuracy, the time of the first written to
    ./ctrl-c-sent. A trial is certainly running, with epochs left, when the signal lands (a poll
    from outside can miss that window on a loaded machine, where a tiny epoch takes
    milliseconds and a poll of the database far longer)."""
    return f"""
import time
import optuna
real = optuna.trial.Trial.report
sent = []
def interrupting(self, value, step):
    real(self, value, step)
    if self.number == 0 and not sent:
        sent.append(True)
        with open("ctrl-c-sent", "w") as f:
            f.write(str(time.time()))
        for _ in range({times}):
            os.kill(os.getpid(), signal.SIGINT)
optuna.trial.Trial.report = interrupting
"""


# Runs search.run with a SQLAlchemy hook that sends the process a SIGINT (Ctrl-C) from inside
# the database write of a trained trial's results: the moment an asynchronous KeyboardInterrupt
# would leave a transaction open and SQLite locked for every later write.
_CTRL_C_WRITING_RESULTS = """
import sqlalchemy
sent = []
@sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "before_cursor_execute")
def ctrl_c(conn, cursor, statement, parameters, context, executemany):
    if not sent and "trial_user_attributes" in statement and "train_loss" in str(parameters):
        sent.append(True)
        os.kill(os.getpid(), signal.SIGINT)
"""


def start(
    args: list[str], cwd: Path, module: str = "search.run", *, hook: str | None = None
) -> subprocess.Popen[str]:
    """Run ``module`` with ``args``; with ``hook``, search.run in a process the hook patched."""
    command = ["-m", module] if hook is None else ["-c", with_search(hook)]
    return subprocess.Popen(
        [sys.executable, *command, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


_storages: dict[Path, optuna.storages.BaseStorage] = {}


def study_at(tmp: Path) -> optuna.Study | None:
    """The tiny study of ``tmp``, once it exists; one storage object per database, since opening
    one costs far more than a poll (and would starve the process under test)."""
    db = tmp / "results" / "tiny.db"
    try:
        if db not in _storages:
            if not db.exists():
                return None
            # The process under test creates the tables; do not race it for that.
            _storages[db] = optuna.storages.RDBStorage(
                f"sqlite:///{db}", skip_table_creation=True, skip_compatibility_check=True
            )
        return optuna.load_study(study_name="tiny", storage=_storages[db])
    except (KeyError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
        # The database or the study is still being created by the process under test.
        _storages.pop(db, None)
        return None


def wait_for(
    condition, timeout: float = 180.0, every: float = 0.2, proc: subprocess.Popen | None = None
) -> None:
    """Poll ``condition``; with ``proc``, fail at once, with its stderr, if it ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read()[-2000:] if proc.stderr else ""
            raise AssertionError(f"exited {proc.returncode} first: {err}")
        time.sleep(every)
    raise TimeoutError("condition not reached")


def finished_record(tmp: Path) -> dict[int, tuple]:
    study = study_at(tmp)
    if study is None:
        return {}
    return {
        t.number: (t.state, t.value, t.params, t.user_attrs, t.intermediate_values, t.constraints)
        for t in study.get_trials(states=FINISHED)
    }


def assert_front_published(study: optuna.Study, *, trials: int) -> None:
    """The Pareto figure and the note are in the study, as optuna-dashboard reads them, and the
    note counts ``trials``."""
    import optuna_dashboard
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    from search.report import GRAPH_OBJECT_ID

    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert GRAPH_OBJECT_ID in get_plotly_graph_objects(attrs)
    assert f"**trials** {trials}:" in optuna_dashboard.get_note(study)


def test_search_killed_at_four_points_loses_nothing(tmp_path: Path) -> None:
    args = search_args(tmp_path, "--epochs", "4", trials=10)
    rng = random.Random(0)

    def between_trials(count: int):
        return lambda: len(finished_record(tmp_path)) > count

    kills = []
    points = ("mid-trial", "between trials", "writing results", "random (during writes)")
    for point in points:
        before = finished_record(tmp_path)
        hooks = {"writing results": _DIE_WRITING_RESULTS, "mid-trial": _DIE_MID_TRIAL}
        proc = start(args, tmp_path, hook=hooks.get(point))
        try:
            if point in ("writing results", "mid-trial"):  # the process kills itself there
                assert proc.wait(timeout=300) == -signal.SIGKILL, proc.stderr.read()[-2000:]
            elif point == "between trials":
                wait_for(between_trials(len(before)), proc=proc)
            else:
                wait_for(lambda: study_at(tmp_path) is not None, proc=proc)
                time.sleep(rng.uniform(0.2, 1.5))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        kills.append(point)
        after = finished_record(tmp_path)
        for number, record in before.items():
            assert after[number] == record, f"trial {number} changed after a kill {point}"
    # The same command again finishes the study.
    proc = start(args, tmp_path)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    study = study_at(tmp_path)
    trials = study.get_trials()
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == 10
    assert len({t.number for t in trials}) == len(trials)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for t in trials:
        if t.state == TrialState.FAIL:
            assert "worker stopped" in t.user_attrs["status"]
    # A killed trial's retry is the same candidate, and a trial is retried at most once.
    retried = [t for t in trials if "failed_trial" in t.system_attrs]
    failed_numbers = [t.system_attrs["failed_trial"] for t in retried]
    assert len(failed_numbers) == len(set(failed_numbers))
    assert kills == list(points)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    # The trial killed mid-trial was failed, its first validation accuracy kept.
    assert any(t.intermediate_values and "train_seconds" not in t.user_attrs for t in failed)
    # The trial killed while writing its results was failed, not left half-finished.
    assert any("train_seconds" in t.user_attrs and "train_loss" not in t.user_attrs for t in failed)
    assert all(t.value is None for t in failed)


def retrain_args(root: Path, out: Path) -> list[str]:
    # 30 short epochs: a kill after epoch 2 or 4 lands well before the run could finish.
    return [
        "--storage", f"sqlite:///{root}/results/tiny.db", "--study-name", "tiny",
        "--epochs", "30", "--batch-size", "8", "--tta-views", "2", "--device", "cpu",
        "--no-progress", "--no-export", "--out", str(out),
    ]  # fmt: skip


def test_retrain_killed_resumes_from_its_last_epoch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_main(search_args(tmp_path, trials=2)) == 0
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = start(retrain_args(tmp_path, whole), tmp_path, "search.retrain")
    assert proc.wait(timeout=600) == 0
    for epochs_done in (2, 4):  # kill twice, after different epochs
        proc = start(retrain_args(tmp_path, killed), tmp_path, "search.retrain")

        def epochs_written(n: int = epochs_done) -> bool:
            history = list(killed.glob("retrain/*/seed-0/history.csv"))
            return bool(history) and len(history[0].read_text().splitlines()) > n

        try:
            wait_for(epochs_written, every=0.02, proc=proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        [state] = killed.glob("retrain/*/seed-0/state.pt")
        assert state.exists()
    [history] = killed.glob("retrain/*/seed-0/history.csv")
    saved = history.read_text().strip().splitlines()[1:]
    proc = start(retrain_args(tmp_path, killed), tmp_path, "search.retrain")
    assert proc.wait(timeout=600) == 0
    # Resumed, not restarted: the epochs finished before the kill keep their rows, timings
    # included (the last row may have been written just before its checkpoint was).
    final = history.read_text().strip().splitlines()[1:]
    assert len(saved) >= 4 and final[: len(saved) - 1] == saved[:-1]
    [a] = whole.glob("retrain/*/seed-0/model.safetensors")
    [b] = killed.glob("retrain/*/seed-0/model.safetensors")
    model_a, _ = load_model(a)
    model_b, _ = load_model(b)
    for p, q in zip(model_a.state_dict().values(), model_b.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    assert len(final) == 30  # 30 epochs, none twice


def test_four_workers_on_a_journal_file(tmp_path: Path) -> None:
    journal = tmp_path / "results" / "tiny.journal"
    args = search_args(tmp_path, "--workers", "4", "--storage", f"journal:///{journal}", trials=12)
    proc = start(args, tmp_path)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-2000:]
    backend = optuna.storages.journal.JournalFileBackend(str(journal))
    study = optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(backend))
    trials = study.get_trials()
    assert len(trials) == 12 and all(t.state in FINISHED for t in trials)
    assert sorted(t.number for t in trials) == list(range(12))
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) >= 2
    # The supervisor kept the front in optuna-dashboard current; its figure counts all trials.
    assert_front_published(study, trials=12)


def test_diverging_trial_is_pruned_with_its_reason(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    real_fit = search.study.fit

    def fit_with_a_huge_lr_for_trial_1(*args, **kwargs):
        if kwargs["desc"] == "trial 1":
            import dataclasses

            kwargs["config"] = dataclasses.replace(kwargs["config"], lr=1e30, warmup_epochs=0)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(search.study, "fit", fit_with_a_huge_lr_for_trial_1)
    assert run_main(search_args(tmp_path, trials=4)) == 0
    trials = study_at(tmp_path).get_trials()
    assert trials[1].state == TrialState.PRUNED
    assert trials[1].user_attrs["status"].startswith("pruned: diverged: training loss became")
    assert len([t for t in trials if t.state in FINISHED]) == 4


def test_out_of_memory_fails_the_trial_frees_it_and_goes_on(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    real_fit = search.study.fit
    models: list[weakref.ref] = []

    def out_of_memory_in_trial_1(model, *args, **kwargs):
        if kwargs["desc"] == "trial 1":
            models.append(weakref.ref(model))

            def hook(module, inputs):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

            model.register_forward_pre_hook(hook)
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(search.study, "fit", out_of_memory_in_trial_1)
    assert run_main(search_args(tmp_path, trials=4)) == 0
    trials = study_at(tmp_path).get_trials()
    assert trials[1].state == TrialState.FAIL
    assert trials[1].user_attrs["status"].startswith("failed: CUDA out of memory")
    assert len([t for t in trials if t.state in FINISHED]) == 4  # the failed one was replaced
    import gc

    gc.collect()
    assert models and models[0]() is None  # the failed trial's network was freed


def test_ctrl_c_marks_the_running_trial_failed(tmp_path: Path) -> None:
    # Trial 0 is alone in its Hyperband bracket, so nothing prunes it: with 100 epochs it is
    # still training when the signal lands, after its first epoch.
    args = search_args(tmp_path, "--epochs", "100", trials=3)
    proc = start(args, tmp_path, hook=ctrl_c_mid_trial())
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out[-2000:], err[-3000:])
    assert "interrupted" in err and "Traceback" not in err
    trials = study_at(tmp_path).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [0]
    assert failed[0].user_attrs["status"] == "failed: interrupted (Ctrl-C)"
    assert "study tiny:" in out  # the summary was printed
    assert_front_published(study_at(tmp_path), trials=len(trials))  # also when interrupted


def test_ctrl_c_inside_a_database_write_finishes_the_write_then_stops(tmp_path: Path) -> None:
    args = search_args(tmp_path, trials=3)
    proc = start(args, tmp_path, hook=_CTRL_C_WRITING_RESULTS)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (out[-2000:], err[-3000:])
    assert "Traceback" not in err and "locked" not in err, err[-3000:]
    trials = study_at(tmp_path).get_trials()
    # The trial whose results were being written kept all of them; it is the last one.
    assert trials and all(t.state in FINISHED for t in trials), [t.state for t in trials]
    assert trials[-1].value is not None and "train_loss" in trials[-1].user_attrs
    assert "study tiny:" in out
    # The database is not left locked: the same command goes on to the end.
    proc = start(args, tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert len([t for t in study_at(tmp_path).get_trials() if t.state in FINISHED]) == 3


def test_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    # Both signals from inside trial 0's first report (no poll from outside, which a tiny
    # epoch outruns on a loaded machine), the time of the first written beside the study.
    args = search_args(tmp_path, "--epochs", "100", trials=3)
    proc = start(args, tmp_path, hook=ctrl_c_mid_trial(times=2))
    out, err = proc.communicate(timeout=120)
    ended = time.time()
    assert proc.returncode == 130, (out[-2000:], err[-3000:])
    assert "Ctrl-C again to quit at once" in err and "Traceback" not in err
    assert "study tiny:" not in out  # gone at once: no clean stop, no summary
    assert ended - float((tmp_path / "ctrl-c-sent").read_text()) < 30
    trials = study_at(tmp_path).get_trials()  # the storage is still readable
    assert [t.number for t in trials] == [0] and trials[0].state == TrialState.RUNNING
    # The next start cleans the trial the quick exit left running, and goes on.
    proc = start(args, tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    states = [t.state for t in study_at(tmp_path).get_trials()]
    assert TrialState.RUNNING not in states and states[0] == TrialState.FAIL


def test_ctrl_c_with_workers_stops_them_all(tmp_path: Path) -> None:
    journal = tmp_path / "results" / "tiny.journal"
    args = search_args(
        tmp_path,
        "--epochs",
        "6",
        "--workers",
        "2",
        "--storage",
        f"journal:///{journal}",
        trials=60,
    )
    proc = start(args, tmp_path)

    storages: list[optuna.storages.BaseStorage] = []

    def load() -> optuna.Study | None:
        if not journal.exists():
            return None
        if not storages:
            backend = optuna.storages.journal.JournalFileBackend(str(journal))
            storages.append(optuna.storages.JournalStorage(backend))
        try:
            return optuna.load_study(study_name="tiny", storage=storages[0])
        except KeyError:
            return None

    wait_for(
        lambda: (s := load()) is not None and len(s.get_trials(states=(TrialState.RUNNING,))) == 2,
        proc=proc,
    )
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=180)
    assert proc.returncode == 130
    trials = load().get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    # Each worker was running a trial or between two when the signal came.
    assert 1 <= len(failed) <= 2
    assert {t.user_attrs["status"] for t in failed} == {"failed: interrupted (Ctrl-C)"}
    # No worker is left behind.
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# -- a full disk, a torn journal record, a killed cache writer --------------------------------

# search.run with every database write failing as SQLite does on a full disk, from the moment the
# third trained trial starts writing its results.
_SQLITE_DISK_FULLS = """
import sqlite3
import sqlalchemy
results = []
@sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "before_cursor_execute")
def disk_full(conn, cursor, statement, parameters, context, executemany):
    if "train_loss" in str(parameters) and "trial_user_attributes" in statement:
        results.append(True)
    if len(results) >= 3 and statement.split()[0].upper() in ("INSERT", "UPDATE", "DELETE"):
        raise sqlite3.OperationalError("database or disk is full")
"""

# The same with a journal: from the third trained trial's results on, every append writes half
# its bytes, as a write that runs out of space does, and fails with ENOSPC.
_JOURNAL_DISK_FULLS = """
import errno
import search.storage
real_append = search.storage.JournalFile.append_logs
real_write = os.write
results = []
def half(fd, data):
    real_write(fd, bytes(data[: len(data) // 2]))
    raise OSError(errno.ENOSPC, "No space left on device")
def append(self, logs):
    if any("train_loss" in str(log.get("user_attr", {})) for log in logs):
        results.append(True)
    if len(results) < 3:
        return real_append(self, logs)
    os.write = half
    try:
        return real_append(self, logs)
    finally:
        os.write = real_write
search.storage.JournalFile.append_logs = append
"""


def _finished(study: optuna.Study) -> dict[int, tuple]:
    return {
        t.number: (t.state, t.value, t.params, t.user_attrs)
        for t in study.get_trials(states=FINISHED)
    }


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_full_disk_is_one_line_and_loses_nothing(tmp_path: Path, kind: str) -> None:
    journal = tmp_path / "results" / "tiny.journal"
    extra = ["--storage", f"journal:///{journal}"] if kind == "journal" else []
    args = search_args(tmp_path, *extra, trials=5)

    def load() -> optuna.Study:
        if kind == "sqlite":
            return study_at(tmp_path)
        backend = optuna.storages.journal.JournalFileBackend(str(journal))
        return optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(backend))

    script = _SQLITE_DISK_FULLS if kind == "sqlite" else _JOURNAL_DISK_FULLS
    proc = subprocess.run(
        [sys.executable, "-c", with_search(script), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    target = "results/tiny.db" if kind == "sqlite" else str(journal)
    assert line.startswith(f"error: the disk is full: cannot write {target} ("), line
    assert "every finished trial is kept" in line
    before = _finished(load())
    assert before  # trials finished before the disk filled up
    if kind == "journal":
        assert journal.read_bytes().endswith(b"\n")  # the failed appends left nothing torn
    # Space freed: the same command finishes the study, every earlier trial as it was.
    proc = start(args, tmp_path)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    after = _finished(load())
    assert len(after) == 5
    for number, record in before.items():
        assert after[number] == record


def test_a_search_resumes_after_a_journal_record_was_torn(tmp_path: Path) -> None:
    journal = tmp_path / "results" / "tiny.journal"
    args = search_args(tmp_path, "--storage", f"journal:///{journal}", trials=3)
    assert subprocess.run([sys.executable, "-m", "search.run", *args], cwd=tmp_path).returncode == 0
    # A writer killed (or out of space) halfway through a record, as the probe found it.
    record = journal.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[1]
    with open(journal, "ab") as f:
        f.write(record[: len(record) // 2])
    torn = record[: len(record) // 2]
    args = search_args(tmp_path, "--storage", f"journal:///{journal}", trials=5)
    proc = start(args, tmp_path)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    [side] = journal.parent.glob("tiny.journal.torn-*")
    assert side.read_bytes() == torn
    assert f"moved them to {side}" in err
    backend = optuna.storages.journal.JournalFileBackend(str(journal))
    study = optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(backend))
    assert len(study.get_trials(states=FINISHED)) == 5


@pytest.fixture(scope="module")
def tiny_journal(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A two-trial search into a journal: the folder of its data and space, the journal's bytes."""
    folder = tmp_path_factory.mktemp("tiny-journal")
    journal = folder / "tiny.journal"
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert run_main(search_args(folder, "--storage", f"journal:///{journal}", trials=2)) == 0
    finally:
        os.chdir(cwd)
    return folder, journal.read_bytes()


@pytest.mark.parametrize("damage", ["torn", "unended", "glued"])
def test_a_refused_start_leaves_a_damaged_journal_as_it_was(
    tmp_path: Path, monkeypatch, capsys, tiny_journal: tuple[Path, bytes], damage: str
) -> None:
    folder, whole = tiny_journal
    *lines, last = whole.rstrip(b"\n").split(b"\n")
    cut = last[: len(last) // 2]
    damaged, moved = {
        "torn": (whole + cut, cut),  # the last record cut off
        "unended": (whole[:-1], None),  # whole but for its newline: ended, not moved
        # cut off, then appended again right after the cut-off bytes (an older version did so)
        "glued": (b"\n".join([*lines, cut + last]) + b"\n", cut + b"\n"),
    }[damage]
    journal = tmp_path / "tiny.journal"
    journal.write_bytes(damaged)
    monkeypatch.chdir(tmp_path)

    def args(*extra: str, trials: int = 2) -> list[str]:
        return search_args(folder, "--storage", f"journal:///{journal}", *extra, trials=trials)

    refusals = {
        "other settings": (["--epochs", "3"], "was made with other settings"),
        "a validation split too large": (["--val-size", "500"], "--val-size 500"),
        "a MACs limit no network meets": (["--max-macs", "1"], "raise --max-macs"),
    }
    for why, (extra, expect) in refusals.items():
        assert run_main(args(*extra)) == 2, why
        err = capsys.readouterr().err
        assert expect in err and len(err.splitlines()) == 1, err
        # Not repaired for a start that does not go ahead: no byte changed, no side file.
        assert journal.read_bytes() == damaged, why
        assert list(tmp_path.iterdir()) == [journal], why

    # A start that goes ahead repairs it, every complete record kept.
    assert run_main(args(trials=3)) == 0
    sides = list(tmp_path.glob("tiny.journal.torn-*"))
    if moved is None:
        assert sides == []
    else:
        [side] = sides
        assert side.read_bytes() == moved
        assert f"to {side}" in capsys.readouterr().err
    backend = optuna.storages.journal.JournalFileBackend(str(journal))
    study = optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(backend))
    (tmp_path / "whole.journal").write_bytes(whole)
    backend = optuna.storages.journal.JournalFileBackend(str(tmp_path / "whole.journal"))
    before = optuna.load_study(study_name="tiny", storage=optuna.storages.JournalStorage(backend))
    after = _finished(study)
    assert len(after) == 3 and {n: after[n] for n in _finished(before)} == _finished(before)
    assert journal.read_bytes().startswith(whole)  # the new records after every old one


# Decodes the data folder with a cache writer that stops halfway: it writes some bytes into
# its temporary file, says so, and waits to be killed.
_DIE_WRITING_CACHE = """
import sys, time, torch
import search.data
def stuck(payload, path):
    with open(path, "wb") as f:
        f.write(b"x" * 100_000)
    print("writing", flush=True)
    time.sleep(600)
search.data.torch.save = stuck
search.data.load_dataset(sys.argv[1], val_size=6)
"""


def test_a_cache_writer_killed_midway_leaves_nothing_behind(tmp_path: Path) -> None:
    from search.data import load_dataset
    from tests.search.searchkit import tiny_data

    data = tiny_data(tmp_path / "data")
    proc = subprocess.Popen(
        [sys.executable, "-c", _DIE_WRITING_CACHE, str(data)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cache = tmp_path / ".nas-cache"
    [leftover] = cache.iterdir()
    assert leftover.name.endswith(".tmp")
    load_dataset(data, val_size=6)  # the next run
    [written] = cache.iterdir()
    assert written.suffix == ".pt"  # the leftover is gone, the cache is there
