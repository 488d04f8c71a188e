"""Storages against an unlucky machine and a careless user: torn journal records, failed
appends, files that are not Optuna's, another schema version, a locked database, a race to
create the tables. Small studies made by hand with Optuna, no training."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import multiprocessing
import os
import sqlite3
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage

import search.storage as storage_module
from search.storage import (
    check_storage_location,
    inspect_storage,
    open_existing_storage,
    open_journal,
    open_storage,
    parse_storage,
)
from space.errors import UserError

optuna.logging.set_verbosity(optuna.logging.ERROR)


def objective(trial: optuna.Trial) -> float:
    trial.set_user_attr("status", "complete")
    return trial.suggest_float("x", 0.0, 1.0)


def make_journal(path: Path, trials: int = 3) -> bytes:
    """A study "s" with ``trials`` complete trials, written by our own journal backend."""
    study = optuna.create_study(storage=open_journal(path), study_name="s", direction="maximize")
    study.set_user_attr("budget", 1000)
    study.optimize(objective, n_trials=trials)
    return path.read_bytes()


def plain_optuna(path: Path) -> optuna.Study:
    """The study as Optuna's own backend reads it (what optuna-dashboard runs on)."""
    return optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))


def snapshot(study: optuna.Study) -> list[tuple]:
    return [(t.number, t.state, t.value, t.params, t.user_attrs) for t in study.get_trials()]


def test_torn_last_record_at_every_offset_is_moved_aside_and_the_study_resumes(
    tmp_path: Path, capsys
) -> None:
    whole = make_journal(tmp_path / "made.journal")
    body, _, last = whole[:-1].rpartition(b"\n")
    complete = body + b"\n"  # every record but the last
    last += b"\n"
    expected = snapshot(plain_optuna_from_bytes(complete, tmp_path / "expected.journal"))
    full = snapshot(plain_optuna_from_bytes(whole, tmp_path / "full.journal"))
    for cut in range(len(last) - 1):  # 0: the record never started; len - 1: see below
        folder = tmp_path / f"cut-{cut}"
        folder.mkdir()
        journal = folder / "s.journal"
        journal.write_bytes(complete + last[:cut])
        study = optuna.load_study(study_name="s", storage=open_journal(journal))
        assert snapshot(study) == expected, cut
        study.optimize(objective, n_trials=1)  # the resume appends
        side = sorted(folder.glob("s.journal.torn-*"))
        if cut == 0:
            assert side == []
        else:
            [side_file] = side
            assert side_file.read_bytes() == last[:cut]
            assert f"moved them to {side_file}" in capsys.readouterr().err
        # Every complete record kept, the new trial after them, readable by Optuna itself.
        resumed = plain_optuna(journal)
        assert snapshot(resumed)[: len(expected)] == expected
        assert len(resumed.trials) == len(expected) + 1
        assert resumed.trials[-1].state == optuna.trial.TrialState.COMPLETE
        assert journal.read_bytes().startswith(complete)
    # All but its newline: the record is whole, so it is ended and kept, not moved aside.
    folder = tmp_path / "cut-newline"
    folder.mkdir()
    journal = folder / "s.journal"
    journal.write_bytes(complete + last[:-1])
    study = optuna.load_study(study_name="s", storage=open_journal(journal))
    study.optimize(objective, n_trials=1)
    assert sorted(folder.glob("s.journal.torn-*")) == []
    resumed = plain_optuna(journal)
    assert snapshot(resumed)[: len(full)] == full and len(resumed.trials) == len(full) + 1
    assert journal.read_bytes().startswith(whole)


def plain_optuna_from_bytes(data: bytes, path: Path) -> optuna.Study:
    path.write_bytes(data)
    return plain_optuna(path)


def test_a_record_glued_to_a_torn_one_is_split_out(tmp_path: Path, capsys) -> None:
    # What an append after a torn record made (Optuna's backend, or this tool before it moved
    # torn records aside): the torn bytes and the next record on one line, then more records.
    journal = tmp_path / "s.journal"
    whole = make_journal(journal)
    lines = whole.split(b"\n")[:-1]
    before = snapshot(plain_optuna(journal))
    torn = lines[2][: len(lines[2]) // 2]
    again = b'{"op_code":0,"worker_id":"w-1","study_name":"s","directions":[1]}'
    damaged = b"\n".join([*lines, torn + again, again]) + b"\n"
    journal.write_bytes(damaged)
    with pytest.raises(ValueError):
        plain_optuna(journal)  # unreadable for Optuna itself
    study = optuna.load_study(study_name="s", storage=open_journal(journal))
    assert snapshot(study) == before
    # Read, and left as it is until the first append: a command may yet be refused.
    assert journal.read_bytes() == damaged and list(tmp_path.glob("s.journal.torn-*")) == []
    study.optimize(objective, n_trials=1)
    [side] = tmp_path.glob("s.journal.torn-*")
    assert side.read_bytes() == torn + b"\n"
    assert "glued to the next record" in capsys.readouterr().err
    assert len(plain_optuna(journal).trials) == len(before) + 1
    assert snapshot(plain_optuna(journal))[: len(before)] == before


def test_junk_in_a_journal_is_refused_naming_the_line(tmp_path: Path) -> None:
    journal = tmp_path / "s.journal"
    lines = make_journal(journal).split(b"\n")[:-1]
    journal.write_bytes(b"\n".join([*lines[:3], b"hello, world", *lines[3:]]) + b"\n")
    damaged = journal.read_bytes()
    with pytest.raises(UserError, match=r"line 4 .* is not a journal record"):
        open_existing_storage(f"journal:///{journal}")
    assert journal.read_bytes() == damaged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.journal"]


@pytest.mark.parametrize(
    "content",
    [b'{"name": "a log of another program"}\n', b"\x89PNG\r\n\x1a\n\x00\x00", b"a,b\n1,2\n"],
    ids=["json-lines", "binary", "csv"],
)
def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "other.journal"
    path.write_bytes(content)
    for check in (
        lambda: open_existing_storage(f"journal:///{path}"),
        lambda: check_storage_location(parse_storage(f"journal:///{path}")),
    ):
        with pytest.raises(UserError, match="not an Optuna journal file"):
            check()
    assert path.read_bytes() == content


def test_an_append_that_fails_on_a_full_disk_leaves_no_partial_record(
    tmp_path: Path, monkeypatch
) -> None:
    journal = tmp_path / "s.journal"
    make_journal(journal)
    before = journal.read_bytes()
    study = optuna.load_study(study_name="s", storage=open_journal(journal))
    real_write = os.write

    def half_then_full(fd: int, data) -> int:
        if len(data) > 8:
            real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage_module.os, "write", half_then_full)
    with pytest.raises(OSError) as info:
        study.set_user_attr("note", "x" * 100)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(journal)
    monkeypatch.undo()
    assert journal.read_bytes() == before  # undone: nothing torn is left for the next append
    study.set_user_attr("note", "written")
    assert plain_optuna(journal).user_attrs["note"] == "written"


# -- SQLite files that are not what Optuna would take ------------------------------------------


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def optuna_db(tmp_path: Path) -> Path:
    path = tmp_path / "study.db"
    optuna.create_study(storage=f"sqlite:///{path}", study_name="s").optimize(objective, n_trials=2)
    return path


def edited(source: Path, target: Path, *sql: str) -> Path:
    target.write_bytes(source.read_bytes())
    with contextlib.closing(sqlite3.connect(target)) as db:
        for statement in sql:
            db.execute(statement)
        db.commit()
    return target


def test_an_optuna_database_passes(optuna_db: Path) -> None:
    spec = parse_storage(f"sqlite:///{optuna_db}")
    assert inspect_storage(spec) == "optuna"
    assert check_storage_location(spec) == "optuna"


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        (["DROP TABLE alembic_version"], "without the schema record"),
        (["UPDATE alembic_version SET version_num = 'v3.0.0.d'"], r"an older schema \(v3\.0\.0\.d"),
        (["UPDATE alembic_version SET version_num = 'v99.0.0'"], "does not know"),
        (["ALTER TABLE trials DROP COLUMN datetime_complete"], "lacks datetime_complete"),
        (["DROP TABLE trial_heartbeats"], "no table 'trial_heartbeats'"),
    ],
    ids=["no-version", "older-schema", "newer-schema", "lookalike-columns", "lookalike-tables"],
)
def test_databases_not_of_this_optuna_are_refused_read_only(
    optuna_db: Path, tmp_path: Path, sql: list[str], fragment: str
) -> None:
    path = edited(optuna_db, tmp_path / "edited.db", *sql)
    before = digest(path)
    for check in (
        lambda: inspect_storage(parse_storage(f"sqlite:///{path}")),
        lambda: open_existing_storage(f"sqlite:///{path}"),
    ):
        with pytest.raises(UserError, match=fragment) as info:
            check()
        assert "\n" not in str(info.value)
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.db", "study.db"]


def test_another_programs_database_is_refused_and_an_empty_file_is_taken(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE studies (id INTEGER)")  # a name Optuna uses, not its table
        db.commit()
    before = digest(other)
    with pytest.raises(UserError, match=r"without the schema record|no table"):
        open_existing_storage(f"sqlite:///{other}")
    with contextlib.closing(sqlite3.connect(tmp_path / "invoices.db")) as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")
        db.commit()
    with pytest.raises(UserError, match=r"without Optuna's tables .*invoices"):
        check_storage_location(parse_storage(f"sqlite:///{tmp_path / 'invoices.db'}"))
    assert digest(other) == before
    empty = tmp_path / "empty.db"
    empty.touch()
    assert check_storage_location(parse_storage(f"sqlite:///{empty}")) == "empty"
    with pytest.raises(UserError, match="holds no Optuna study"):
        open_existing_storage(f"sqlite:///{empty}")


def test_a_damaged_database_is_refused(optuna_db: Path, tmp_path: Path) -> None:
    data = bytearray(optuna_db.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the schema page
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"damaged SQLite database|not an SQLite database"):
        inspect_storage(parse_storage(f"sqlite:///{damaged}"))
    assert damaged.read_bytes() == bytes(data)


def test_a_locked_database_is_called_locked(optuna_db: Path, monkeypatch) -> None:
    monkeypatch.setattr(storage_module, "_SQLITE_WAIT", 0.2)
    with contextlib.closing(sqlite3.connect(optuna_db, isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(UserError, match="locked by another program") as info:
            inspect_storage(parse_storage(f"sqlite:///{optuna_db}"))
        assert "not an SQLite database" not in str(info.value)
        holder.execute("ROLLBACK")
    assert inspect_storage(parse_storage(f"sqlite:///{optuna_db}")) == "optuna"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("postgresql+psycopg://nas@db-host:abc/nas", "the port 'abc' is not a number"),
        ("postgresql+psycopg://nas@db-host:99999/nas", "the port 99999 is not in 1 to 65535"),
    ],
)
def test_a_malformed_server_url_is_one_line(url: str, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        parse_storage(url)


def test_a_storage_file_name_too_long_for_the_system(tmp_path: Path) -> None:
    for kind in ("sqlite", "journal"):
        spec = parse_storage(f"{kind}:///{tmp_path / ('n' * 240)}.{kind}")
        with pytest.raises(UserError, match="this file system allows at most"):
            check_storage_location(spec)
    assert list(tmp_path.iterdir()) == []


def test_a_named_pipe_as_storage_is_refused_without_opening_it(tmp_path: Path) -> None:
    pipe = tmp_path / "s.db"
    os.mkfifo(pipe)
    with pytest.raises(UserError, match="is a named pipe, not a file"):
        check_storage_location(parse_storage(f"sqlite:///{pipe}"))


# -- two processes create a new SQLite study at once -----------------------------------------


def _create(path: str, barrier, results) -> None:
    try:
        barrier.wait(timeout=30)
        spec = parse_storage(f"sqlite:///{path}")
        for _ in range(3):  # as search.run does: a look first, which must not see half a schema
            check_storage_location(spec)
        storage = open_storage(spec, heartbeat=30, grace=120)
        check_storage_location(spec)
        optuna.create_study(storage=storage, study_name="s", load_if_exists=True)
        results.put("ok")
    except BaseException as exc:  # reported to the test
        results.put(f"{type(exc).__name__}: {exc}"[:300])


def test_processes_creating_a_new_sqlite_study_at_once_all_go_on(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for attempt in range(4):
        path = tmp_path / f"race-{attempt}.db"
        barrier, results = context.Barrier(3), context.Queue()
        processes = [
            context.Process(target=_create, args=(str(path), barrier, results)) for _ in range(3)
        ]
        for p in processes:
            p.start()
        for p in processes:
            p.join(timeout=120)
        outcomes = [results.get(timeout=5) for _ in processes]
        assert outcomes == ["ok"] * 3, outcomes
        assert optuna.get_all_study_names(f"sqlite:///{path}") == ["s"]


def _sqlite_study(path: Path) -> None:
    storage = open_storage(parse_storage(f"sqlite:///{path}"), heartbeat=30, grace=120)
    optuna.create_study(storage=storage, study_name="s").enqueue_trial({})
    storage.engine.dispose()


def test_a_database_left_with_a_hot_journal_by_a_crash_is_still_read(tmp_path: Path) -> None:
    # A writer killed mid-transaction leaves <db>-journal; only a writable connection can roll
    # it back, and doing so restores the last committed state.
    live = tmp_path / "live.db"
    _sqlite_study(live)
    writer = sqlite3.connect(live)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE studies SET study_name = 'half-written'")
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for suffix in ("", "-journal"):  # the files as the killed writer left them
        (crashed / f"live.db{suffix}").write_bytes((tmp_path / f"live.db{suffix}").read_bytes())
    writer.rollback()
    writer.close()
    spec = parse_storage(f"sqlite:///{crashed / 'live.db'}")
    assert inspect_storage(spec) == "optuna"
    _, storage = open_existing_storage(spec.url)
    assert optuna.get_all_study_names(storage) == ["s"]


def test_an_sqlite_path_with_url_characters_is_refused(tmp_path: Path) -> None:
    # SQLAlchemy would cut the path at '?' or '#' and decode '%20': another file entirely.
    for name in ("run #2", "q?x", "pct %20"):
        with pytest.raises(UserError, match="an SQLite path cannot hold"):
            parse_storage(f"sqlite:///{tmp_path / name / 's.db'}")
    assert list(tmp_path.iterdir()) == []


def test_tables_a_killed_first_open_left_unstamped_are_finished(tmp_path: Path) -> None:
    # Optuna makes its tables, then stamps their schema revision: a kill in between leaves
    # the tables, no revision and no study.
    path = tmp_path / "new.db"
    _sqlite_study(path)
    with sqlite3.connect(path) as db:
        for table in (
            "trial_values",
            "trial_params",
            "trial_system_attributes",
            "trial_user_attributes",
            "trial_intermediate_values",
            "trial_heartbeats",
            "trials",
            "study_directions",
            "study_system_attributes",
            "study_user_attributes",
            "studies",
        ):
            db.execute(f"DELETE FROM {table}")  # fmt: skip
        db.execute("DROP TABLE alembic_version")
    spec = parse_storage(f"sqlite:///{path}")
    assert inspect_storage(spec) == "empty"
    storage = open_storage(spec, heartbeat=30, grace=120)
    optuna.create_study(storage=storage, study_name="again")
    assert inspect_storage(spec) == "optuna"


def test_a_first_record_cut_anywhere_is_moved_aside(tmp_path: Path) -> None:
    # A new journal killed while its first record was written: cut within its first bytes too.
    first = make_journal(tmp_path / "made.journal")
    record = first.split(b"\n")[0]
    for cut in (1, 5, 11, len(record) // 2):
        journal = tmp_path / f"cut-{cut}.journal"
        journal.write_bytes(record[:cut])
        spec = parse_storage(f"journal:///{journal}")
        assert inspect_storage(spec) == "empty", cut
        study = optuna.create_study(storage=open_journal(journal), study_name="s")
        study.optimize(objective, n_trials=1)
        assert len(plain_optuna(journal).trials) == 1
        [side] = tmp_path.glob(f"cut-{cut}.journal.torn-*")
        assert side.read_bytes() == record[:cut]
