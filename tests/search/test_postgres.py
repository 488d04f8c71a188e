"""The search on a real PostgreSQL server, as several machines would share it.

Each test gets a fresh database on a throwaway server (tests/postgres.py). Workers on one study,
whether children of one ``--workers 2`` command or independent commands, end with exactly the
requested trials; a study resumes; a trial of a machine whose heartbeat stopped is failed and
retried once; a server that is down is the user's error, and nothing is created.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from search import provenance
from search.run import main as run_main
from search.storage import open_storage, parse_storage
from space.searchspace import SearchSpace, sample
from tests.postgres import PostgresServer, running_server
from tests.search.searchkit import search_args

pytestmark = pytest.mark.postgres

STUDY = "tiny"  # the study name search_args gives
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # tests/conftest.py keeps torch, and subprocesses, to one thread


def load(url: str) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=url)


def start(args: list[str]) -> subprocess.Popen[str]:
    """``python -m search.run ARGS`` in the background, as a machine of its own would run it."""
    return subprocess.Popen(
        [sys.executable, "-m", "search.run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_exactly(trials: list[FrozenTrial], n: int) -> None:
    """``n`` trials, all finished, numbered 0..n-1: none lost, none run twice."""
    assert [t.number for t in trials] == list(range(n))
    assert [t.state for t in trials if t.state not in DONE] == []


def test_two_worker_processes_of_one_command(tmp_path: Path, postgres_url: str) -> None:
    args = search_args(tmp_path, "--workers", "2", "--storage", postgres_url, trials=6)
    proc = start(args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    trials = load(postgres_url).get_trials()
    assert_exactly(trials, 6)
    workers = {t.user_attrs["worker"]["pid"] for t in trials}
    assert len(workers) == 2 and proc.pid not in workers  # the two children did the work
    assert sum(line.startswith("trial ") for line in out.splitlines()) == 6


def test_two_machines_started_at_once(tmp_path: Path, postgres_url: str) -> None:
    # Two independent commands on an empty database, as two machines would run them: both
    # create Optuna's tables and the study at once, and both ask for the study's total.
    args = search_args(tmp_path, "--storage", postgres_url, trials=6)
    machines = [start(args) for _ in range(2)]
    outputs = [m.communicate(timeout=300) for m in machines]
    for m, (_, err) in zip(machines, outputs, strict=True):
        assert m.returncode == 0, err[-3000:]
    trials = load(postgres_url).get_trials()
    assert_exactly(trials, 6)
    assert {t.user_attrs["worker"]["pid"] for t in trials} == {m.pid for m in machines}
    # Each reports the trials it ran; together, each trial once.
    lines = [line for out, _ in outputs for line in out.splitlines() if line.startswith("trial ")]
    assert sorted(int(line.split()[1]) for line in lines) == list(range(6))


def test_resume(tmp_path: Path, postgres_url: str) -> None:
    assert run_main(search_args(tmp_path, "--storage", postgres_url, trials=2)) == 0
    first = {t.number: (t.state, t.value, t.user_attrs["key"]) for t in load(postgres_url).trials}
    assert run_main(search_args(tmp_path, "--storage", postgres_url, trials=4)) == 0
    trials = load(postgres_url).get_trials()
    assert_exactly(trials, 4)
    assert {t.number: (t.state, t.value, t.user_attrs["key"]) for t in trials[:2]} == first


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used:UserWarning")
def test_trial_of_a_machine_that_stopped_beating_is_retried_once(
    tmp_path: Path, postgres_url: str
) -> None:
    heartbeat, grace = 1, 2  # seconds
    config = tmp_path / "beat.toml"
    config.write_text(f"[search]\nheartbeat = {heartbeat}\ngrace = {grace}\n")
    args = [*search_args(tmp_path, "--storage", postgres_url), "--config", str(config)]
    assert run_main([*args, "--trials", "1"]) == 0

    # Another machine draws a candidate and beats while it trains. Its pid runs here too, so
    # only the heartbeat can tell that it stopped.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(postgres_url, heartbeat_interval=heartbeat, grace_period=grace)
    remote = optuna.load_study(study_name=STUDY, storage=storage).ask()
    sample(remote, SearchSpace.load(tmp_path / "space.toml"), budget=20_000, num_classes=3)
    remote.set_user_attr("worker", {"host": "elsewhere", "pid": os.getpid(), "start": None})
    sampled = load(postgres_url).trials[1].params
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            storage.record_heartbeat(remote._trial_id)
            stop.wait(heartbeat / 2)

    beating = threading.Thread(target=beat)
    beating.start()
    try:
        # While it beats, its trial counts toward the total and is left alone.
        assert run_main([*args, "--trials", "2"]) == 0
        trials = load(postgres_url).trials
        assert len(trials) == 2 and trials[1].state == TrialState.RUNNING
    finally:
        stop.set()
        beating.join()
    time.sleep(grace + 0.5)  # the machine is gone: no beat for longer than the grace period
    assert run_main([*args, "--trials", "3"]) == 0

    trials = load(postgres_url).get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [1]
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].state in DONE
    assert retried[0].params == sampled  # the same candidate, run again, here
    assert retried[0].user_attrs["worker"]["host"] == provenance.host()
    assert len([t for t in trials if t.state in DONE]) == 3 == len(trials) - 1


def test_stopped_server_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with running_server() as gone:
        url = gone.url(password="hunter2")  # trust authentication: any password will do
    args = search_args(tmp_path, "--storage", url)
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    assert run_main(args) == 2
    err = capsys.readouterr().err
    assert "cannot connect" in err and "is the server up" in err, err
    assert len(err.strip().splitlines()) == 1
    assert "hunter2" not in err and "postgres:***@" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_missing_database_is_a_user_error(
    tmp_path: Path, postgres_server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    args = search_args(tmp_path, "--storage", postgres_server.url("absent"))
    assert run_main(args) == 2
    err = capsys.readouterr().err
    assert 'database "absent" does not exist' in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()
    assert "absent" not in postgres_server.databases()  # not created either


def test_machines_opening_an_empty_database_at_once(postgres_url: str) -> None:
    # Opening an empty database creates Optuna's tables; without the lock in open_storage all
    # but one of several machines starting together fail on a duplicate key.
    spec = parse_storage(postgres_url)
    together = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_study() -> None:
        together.wait()
        try:
            storage = open_storage(spec, heartbeat=30, grace=120)
            optuna.create_study(storage=storage, study_name=STUDY, load_if_exists=True)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=open_study) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [s.study_name for s in optuna.get_all_study_summaries(postgres_url)] == [STUDY]


def test_claim_lock_outlives_a_dropped_connection(postgres_url: str) -> None:
    # A trial can run for an hour; a server restart or an idle timeout in between closes the
    # connections the worker holds. The next claim must get a fresh one, and the lock must
    # still exclude a second worker.
    import sqlalchemy

    from search.storage import ClaimLock

    spec = parse_storage(postgres_url)
    storage = open_storage(spec, heartbeat=30, grace=120)
    one, two = ClaimLock(spec, storage, STUDY), ClaimLock(spec, storage, STUDY)
    one.acquire()
    one.release()
    admin = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as c:  # drop every other session of the database, as a restart would
        c.execute(
            sqlalchemy.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    one.acquire()
    got = threading.Event()
    waiter = threading.Thread(target=lambda: (two.acquire(), got.set()))
    waiter.start()
    assert not got.wait(1.0), "a second worker claimed while the first held the lock"
    one.release()
    assert got.wait(10.0)
    waiter.join()
    two.close()
    one.close()
    admin.dispose()
