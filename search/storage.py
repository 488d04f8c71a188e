"""Where a study lives: SQLite for one process, a journal file for several on one machine,
PostgreSQL for several machines; and the lock that lets workers claim trials one at a time.

URLs::

    sqlite:///results/cifar10-400k.db          (a relative path; four slashes for an absolute one)
    journal:///results/cifar10-400k.journal     (Optuna's JournalStorage over a file, same rule)
    postgresql+psycopg://user:password@host:5432/database

The claim lock makes "count the trials, then ask for a new one" atomic across processes, so N
workers end with exactly the requested number of trials: ``flock`` on the SQLite or journal file,
a PostgreSQL advisory lock on the server.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import stat
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.storages.journal._file import get_lock_file

from space._io import check_path, check_writable, disk_full_message, write_atomic
from space.errors import UserError

# Bytes kept free in a storage file's name for what is added to it: Optuna's journal lock
# ("<name>.lock" + a uuid + ".rename"), a torn-record side file, SQLite's "-journal".
_SUFFIX_ROOM = 48
_SQLITE_WAIT = 10.0  # seconds a read-only check waits for a database another program locked
_EXPECTED = (
    "sqlite:///FILE.db (one process), journal:///FILE.journal (several processes, one machine) "
    "or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE (several machines)"
)


@dataclass(frozen=True)
class StorageSpec:
    """A parsed storage URL."""

    url: str  # as Optuna (or optuna-dashboard) takes it; journal:// becomes a file path there
    kind: Literal["sqlite", "journal", "postgresql"]
    path: Path | None = None  # the file of sqlite and journal storages

    @property
    def parallel_safe(self) -> bool:
        """Whether several processes may write at once."""
        return self.kind != "sqlite"

    @property
    def dashboard_target(self) -> str:
        """What to pass to ``optuna-dashboard`` (the password left out)."""
        return str(self.path) if self.kind == "journal" else redact(self.url)

    @property
    def display(self) -> str:
        """The URL to print or record: a password is replaced by ***."""
        return redact(self.url)


def parse_storage(url: str) -> StorageSpec:
    """Check the form of a storage URL (nothing is opened or created)."""
    text = url.strip()
    for prefix, kind in (("sqlite:///", "sqlite"), ("journal:///", "journal")):
        if text.startswith(prefix):
            rest = text[len(prefix) :]
            if not rest or rest.endswith("/") or rest == ":memory:":
                raise UserError(f"--storage {url!r} names no file; expected {_EXPECTED}")
            path = Path(rest)  # "sqlite:////abs" leaves "/abs": absolute
            odd = sorted({c for c in rest if c in "?#%"})
            if kind == "sqlite" and odd:
                # SQLAlchemy reads an SQLite URL's path as a URL's: it cuts it at '?' or '#'
                # and decodes '%xx', so the database would land in another file.
                raise UserError(
                    f"--storage {url!r}: an SQLite path cannot hold {' '.join(map(repr, odd))} "
                    "(the URL would name another file); rename the folder or file"
                )
            return StorageSpec(url=f"{prefix}{rest}", kind=kind, path=path)  # type: ignore[arg-type]
    if text.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        rest = text.split("://", 1)[1]
        if "/" not in rest or not rest.split("/", 1)[1] or not rest.split("/", 1)[0]:
            raise UserError(f"--storage {url!r} lacks a host or a database; expected {_EXPECTED}")
        spec = StorageSpec(url="postgresql+psycopg://" + rest, kind="postgresql")
        _check_url(spec)
        return spec
    raise UserError(f"--storage must be {_EXPECTED}, but got {url!r}")


def _check_url(spec: StorageSpec) -> None:
    """The parts of a server URL that SQLAlchemy would only reject with a traceback."""
    import sqlalchemy

    try:
        port = sqlalchemy.engine.make_url(spec.url).port
    except (ValueError, sqlalchemy.exc.ArgumentError) as exc:
        # Not the library's message: it repeats the URL, password and all.
        host = spec.url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
        port = host.rpartition("]:")[2] if host.startswith("[") else host.partition(":")[2]
        detail = (
            f"the port {port!r} is not a number"
            if port and isinstance(exc, ValueError)
            else "it cannot be parsed"
        )
        raise UserError(
            f"--storage {spec.display!r}: a malformed URL ({detail}); expected "
            "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"
        ) from None
    if port is not None and not 1 <= port <= 65535:
        raise UserError(f"--storage {spec.display!r}: the port {port} is not in 1 to 65535")


# -- what a storage holds --------------------------------------------------------------------

State = Literal["absent", "empty", "optuna"]


def inspect_storage(spec: StorageSpec) -> State:
    """What a storage holds, found without writing anything: ``absent`` (no file yet),
    ``empty`` (an empty file or database, which Optuna would set up) or ``optuna`` (Optuna's
    records, of the schema this Optuna reads).

    Anything else is a ``UserError`` with one line, before Optuna gets a chance to add its tables
    to it or to fail with a traceback: a file of another kind, another program's database, tables
    named like Optuna's that are not, another schema version, a locked or damaged database, a
    journal with lines that are not journal records, a server that does not answer. The one place
    where every command classifies a storage.
    """
    if spec.path is not None:
        check_path(spec.path, room=_SUFFIX_ROOM, what=f"--storage {spec.url!r}")
        if not os.path.lexists(spec.path):
            return "absent"
        try:
            kind = spec.path.stat().st_mode
        except OSError as exc:
            raise UserError(f"--storage {spec.url!r}: cannot read it ({exc.strerror})") from None
        if not stat.S_ISREG(kind):
            raise UserError(
                f"--storage {spec.url!r}: {spec.path} is {_file_type(kind)}, not a file"
            )
        if not os.access(spec.path, os.R_OK):
            raise UserError(f"--storage {spec.url!r}: cannot read it (permission denied)")
        if spec.kind == "journal":
            return _inspect_journal(spec)
        if spec.path.stat().st_size == 0:
            return "empty"
    return _inspect_database(spec)


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _inspect_database(spec: StorageSpec) -> State:
    import sqlalchemy

    if spec.kind == "sqlite":
        assert spec.path is not None
        # Read-only: opening the file this way creates nothing, not even a missing file. But a
        # writer killed mid-transaction leaves a hot journal that only a writable connection
        # can roll back (to the last committed state, which changes no finished record).
        hot = spec.path.with_name(spec.path.name + "-journal").exists()
        mode = "rw" if hot else "ro"
        url = f"sqlite:///file:{spec.path.resolve()}?mode={mode}&uri=true"
        connect_args: dict = {"timeout": _SQLITE_WAIT}
    else:
        url, connect_args = spec.url, {"connect_timeout": 10}
    engine = sqlalchemy.create_engine(
        url, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool
    )
    try:
        try:
            connection = engine.connect()
        except ImportError as exc:  # a driver the URL asks for is missing
            raise UserError(f"--storage {spec.display}: {exc}") from None
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise UserError(database_error(spec, exc, connecting=True)) from None
        with connection:
            try:
                # Under the lock that guards the creation of Optuna's tables: another process
                # creating them right now would otherwise be seen half done.
                with _schema_lock(spec, connection=connection):
                    return _check_schema(spec, connection)
            except sqlalchemy.exc.SQLAlchemyError as exc:
                raise UserError(database_error(spec, exc)) from None
    finally:
        engine.dispose()


def database_error(spec: StorageSpec, exc: Exception, *, connecting: bool = False) -> str:
    """One line for an error of the database library; ``connecting``: it came from the
    connection itself."""
    reason = _reason(exc)
    where = f"--storage {spec.display!r}"
    if spec.kind == "postgresql":
        if connecting:
            return f"{where}: cannot connect ({reason}); is the server up and the database created?"
        return f"{where}: cannot read it ({reason})"
    text = reason.lower()
    if "locked" in text or "busy" in text:
        return (
            f"{where}: the database is locked by another program (waited {_SQLITE_WAIT:g} s); "
            "try again once it is done with the file"
        )
    if "not a database" in text or "file is encrypted" in text:
        return f"{where}: not an SQLite database ({reason})"
    if "malformed" in text or "corrupt" in text:
        return f"{where}: a damaged SQLite database ({reason}); restore it from a copy"
    if "unable to open" in text:
        return f"{where}: cannot open it ({reason})"
    return f"{where}: cannot read it as an SQLite database ({reason})"


def _empty_optuna_tables(connection: Any, tables: set[str], ours: Any) -> bool:
    """Whether every table of Optuna's schema is there and no study was written yet."""
    import sqlalchemy

    if not set(ours) - {"alembic_version"} <= tables:
        return False
    count = connection.execute(sqlalchemy.text("SELECT COUNT(*) FROM studies")).scalar()
    return count == 0


def _check_schema(spec: StorageSpec, connection: Any) -> State:
    """Optuna's tables and columns and its schema revision, read through ``connection``."""
    import sqlalchemy
    from optuna.storages._rdb import models

    inspector = sqlalchemy.inspect(connection)
    tables = set(inspector.get_table_names())
    ours = models.BaseModel.metadata.tables
    where = f"--storage {spec.display!r}"
    if not tables & set(ours):
        if not tables or spec.kind == "postgresql":
            return "empty"  # Optuna creates its tables (beside others' on a server)
        shown = ", ".join(sorted(tables)[:4]) + (", ..." if len(tables) > 4 else "")
        raise UserError(
            f"{where}: an SQLite file without Optuna's tables (it holds {shown}): another "
            "program's database; give a new file name"
        )
    revision = None
    if "alembic_version" in tables:
        rows = connection.execute(sqlalchemy.text("SELECT version_num FROM alembic_version"))
        found = [r[0] for r in rows]
        revision = found[0] if len(found) == 1 else None
    if revision is None and _empty_optuna_tables(connection, tables, ours):
        # A first open killed after Optuna made its tables, before it stamped their revision:
        # no study was ever written; Optuna finishes the job.
        return "empty"
    if revision is None:
        raise UserError(
            f"{where}: tables named like Optuna's, but without the schema record Optuna keeps "
            "beside them (alembic_version): not an Optuna storage"
        )
    head, known = _schema_revisions()
    if revision != head:
        if revision in known:
            raise UserError(
                f"{where}: an Optuna storage of an older schema ({revision}; Optuna "
                f"{optuna.__version__} reads {head}); upgrade it first: optuna storage upgrade "
                f"--storage {spec.display}"
            )
        raise UserError(
            f"{where}: an Optuna storage of schema {revision!r}, which Optuna "
            f"{optuna.__version__} does not know (made by a newer Optuna?); use the Optuna "
            "version that made it"
        )
    for name, table in ours.items():
        if name not in tables:
            raise UserError(f"{where}: tables named like Optuna's that are not (no table {name!r})")
        columns = {c["name"] for c in inspector.get_columns(name)}
        missing = [c.name for c in table.columns if c.name not in columns]
        if missing:
            raise UserError(
                f"{where}: tables named like Optuna's that are not (table {name!r} lacks "
                f"{', '.join(missing)})"
            )
    return "optuna"


@functools.cache
def _schema_revisions() -> tuple[str, frozenset[str]]:
    """(the schema revision this Optuna writes, every revision it knows), from its migrations."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from optuna.storages._rdb import models

    folder = Path(models.__file__).parent
    config = Config(str(folder / "alembic.ini"))
    config.set_main_option("script_location", str(folder / "alembic").replace("%", "%%"))
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    assert head is not None
    return head, frozenset(r.revision for r in script.walk_revisions())


def _reason(exc: Exception) -> str:
    lines = str(getattr(exc, "orig", exc)).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# -- opening ---------------------------------------------------------------------------------


def check_storage_location(spec: StorageSpec) -> State:
    """Check that the storage can be used, creating nothing: a file storage's folder must be
    writable, and what it holds must be empty or Optuna's (``inspect_storage``); a database
    server must answer. Returns what it holds."""
    if spec.path is not None:
        state = inspect_storage(spec)
        check_writable(spec.path)
        if state != "absent" and not os.access(spec.path, os.W_OK):
            raise UserError(f"--storage {spec.url!r}: cannot write it (the file is read-only)")
        return state
    return inspect_storage(spec)


def open_storage(spec: StorageSpec, *, heartbeat: int, grace: int) -> BaseStorage:
    """Open (and for files, create) the storage. RDB storages get heartbeats: a trial whose
    process stopped beating for ``grace`` seconds is failed and retried once."""
    if spec.kind == "journal":
        assert spec.path is not None
        spec.path.parent.mkdir(parents=True, exist_ok=True)
        return open_journal(spec.path)
    engine_kwargs: dict = {"pool_pre_ping": True}
    if spec.kind == "sqlite":
        assert spec.path is not None
        spec.path.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}  # wait for a busy database, seconds
    else:
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            with _schema_lock(spec):
                return RDBStorage(
                    spec.url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat,
                    grace_period=grace,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                )
        except ImportError as exc:  # a driver the URL asks for is missing
            raise UserError(f"--storage {redact(spec.url)}: {exc}") from None
        except Exception as exc:  # sqlalchemy.exc.OperationalError and friends
            full = disk_full_message(exc, spec.path or "the database server")
            if full is not None:
                raise UserError(f"{full}; free some space and run the command again") from None
            import sqlalchemy

            if isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
                connecting = spec.kind == "postgresql"  # the tables were checked before
                raise UserError(database_error(spec, exc, connecting=connecting)) from None
            raise


@contextlib.contextmanager
def _schema_lock(spec: StorageSpec, *, connection: Any = None) -> Iterator[None]:
    """Hold a lock while Optuna opens a storage, and while a storage is inspected: opening an
    empty database creates Optuna's tables, and two processes that start at once would both
    create them (all but one then fail: "table ... already exists" on SQLite, a duplicate key in
    ``pg_type`` on PostgreSQL), or one would see the other's tables half made.

    SQLite: ``flock`` on the database's folder (a lock file would be left behind); PostgreSQL:
    an advisory lock, one per database, on ``connection`` when given. Neither writes anything.
    """
    if spec.kind == "sqlite":
        assert spec.path is not None
        folder = os.open(spec.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            yield
        finally:
            os.close(folder)  # releases the lock
        return
    if spec.kind != "postgresql":
        yield
        return
    import sqlalchemy

    if connection is not None:
        with _advisory_lock(connection):
            yield
        return
    engine = sqlalchemy.create_engine(
        spec.url, connect_args={"connect_timeout": 10}, poolclass=sqlalchemy.pool.NullPool
    )
    try:
        with engine.connect() as connection, _advisory_lock(connection):
            yield
    finally:
        engine.dispose()


@contextlib.contextmanager
def _advisory_lock(connection: Any) -> Iterator[None]:
    import sqlalchemy

    # Autocommit: the lock belongs to the session, not to a transaction left open.
    connection = connection.execution_options(isolation_level="AUTOCOMMIT")
    key = {"k": _lock_key("budget-nas: Optuna's tables")}
    connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), key)
    try:
        yield
    finally:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), key)


def _lock_key(name: str) -> int:
    """A PostgreSQL advisory-lock key (a signed 64-bit integer) for a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def redact(url: str) -> str:
    """The URL without its password."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    return f"{scheme}://{credentials}{at}{host}"


def open_existing_storage(url: str) -> tuple[StorageSpec, optuna.storages.BaseStorage]:
    """Open a storage that must already hold Optuna's records; creates and changes nothing
    (Optuna itself would create a missing SQLite file and the tables of an empty database)."""
    spec = parse_storage(url)
    state = inspect_storage(spec)
    if state == "absent":
        raise UserError(f"--storage {spec.display!r}: no such file {spec.path}")
    if state == "empty":
        raise UserError(f"--storage {spec.display!r}: holds no Optuna study (it is empty)")
    try:
        storage = open_storage(spec, heartbeat=30, grace=120)
        optuna.study.get_all_study_names(storage)
    except UserError:
        raise
    except Exception as exc:  # a damaged record that the checks above could not see
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"--storage {spec.display!r}: cannot read it as an Optuna storage ({first})"
        ) from None
    return spec, storage


# -- journal files ---------------------------------------------------------------------------

# A journal record as Optuna writes it: one JSON object a line, compact, this key first.
_RECORD_START = b'{"op_code":'
_HEAD = 1 << 20  # bytes read to judge a journal's first or last line


def _is_record(line: bytes) -> bool:
    return _parse_record(line) is not None


def _parse_record(line: bytes) -> dict[str, Any] | None:
    """The journal record a line holds, or None when it holds none."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if (
        isinstance(record, dict)
        and isinstance(record.get("op_code"), int)
        and isinstance(record.get("worker_id"), str)
    ):
        return record
    return None


def _inspect_journal(spec: StorageSpec) -> State:
    assert spec.path is not None
    with open(spec.path, "rb") as f:
        head = f.read(_HEAD)
    if not head:
        return "empty"
    line, newline, _ = head.partition(b"\n")
    if newline and _is_record(line):
        return "optuna"
    started = head.startswith(_RECORD_START) or _RECORD_START.startswith(head)
    if not newline and started and len(head) < _HEAD:
        # Only a first record whose write did not finish (cut anywhere, even within its first
        # bytes): moved aside at the first append.
        return "empty"
    raise UserError(
        f"--storage {spec.url!r}: not an Optuna journal file (its first line is not a journal "
        "record); give a new file name, or sqlite:///FILE.db for an SQLite file"
    )


class JournalFile(JournalFileBackend):
    """Optuna's journal file, with what its own backend lacks against an unlucky machine.

    A write that did not finish (a kill, a power cut) leaves the last record cut off, and Optuna
    would append the next record right after it, making a line that no reader can parse: the
    whole study would be unreadable from then on. So before each append, under the journal's
    lock, a cut-off last record is moved to a side file (``move_torn_tail``). An append that
    fails (a full disk) is undone at once, so it leaves no partial record behind.

    Records that such an append glued to a cut-off one (``open_journal``) are read split out,
    and split out in the file itself only at the first append or ``repair``: a command refused
    before it writes anything leaves the journal as it found it.
    """

    def __init__(self, file_path: str, *, glued: bool = False) -> None:
        super().__init__(file_path)
        self._glued = glued  # lines holding a cut-off record and a whole one, not yet split

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        if not self._glued:
            yield from super().read_logs(log_number_from)
            return
        # Optuna's reader fails at a glued line: each line is read here, the whole record of a
        # glued one taken. Once repaired, the file holds the same records on the same lines.
        with open(self._file_path, "rb") as f:
            for number, line in enumerate(f):
                if not line.endswith(b"\n"):
                    break  # a last record being written or cut off: not a record yet
                if number < log_number_from:
                    continue
                record = _parse_record(line)
                if record is None:
                    split = _glued_record(line[:-1])
                    record = None if split is None else _parse_record(line[split:])
                if record is None:
                    raise ValueError(f"{self._file_path}: line {number + 1} is no journal record")
                yield record

    def repair(self) -> None:
        """Split out the glued records and move a cut-off last record aside now, as the first
        append would."""
        with get_lock_file(self._lock):
            self._repair()

    def _repair(self) -> None:  # under the journal's lock
        path = Path(self._file_path)
        if self._glued:
            _split_glued_records(path)
            self._glued = False
            # A new file, where the lines after a split one start earlier: offsets read afresh.
            self._log_number_offset = {0: 0}
        move_torn_tail(path)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        data = text.encode("utf-8")
        path = self._file_path
        with get_lock_file(self._lock):
            self._repair()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                size = os.fstat(fd).st_size
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)
                    raise OSError(exc.errno, exc.strerror, path) from exc
            finally:
                os.close(fd)


class Journal(JournalStorage):
    """Optuna's journal storage over a ``JournalFile``, which ``repair_journal`` repairs."""

    def __init__(self, backend: JournalFile) -> None:
        self.file = backend
        super().__init__(backend)


def open_journal(path: Path) -> Journal:
    """A journal storage over ``path`` (created when missing), its damage read past or refused;
    opening writes nothing to a journal that exists.

    A line that a cut-off record and the record appended after it share (written by a version of
    this tool, or Optuna itself, that appended after a cut-off record) is read as the complete
    record. In the file it is split at the first append or at ``repair_journal``: the cut-off part
    goes to a side file, the complete record stays. Any other line that is not a journal record
    is a ``UserError`` naming its line number.
    """
    glued = path.is_file() and _last_line_damaged(path) and _has_glued_records(path)
    try:
        return Journal(JournalFile(str(path), glued=glued))
    except OSError as exc:
        full = disk_full_message(exc, path)
        if full is not None:
            raise UserError(f"{full}; free some space and run the command again") from None
        raise UserError(f"--storage journal:///{path}: cannot open it ({exc.strerror})") from None
    except Exception as exc:  # Optuna's replay stopped at a damaged line
        if glued or not _has_glued_records(path):
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(
                f"--storage journal:///{path}: cannot replay the journal ({first})"
            ) from None
    return Journal(JournalFile(str(path), glued=True))


def repair_journal(storage: BaseStorage) -> None:
    """Repair the damage that opening a journal storage read past (``open_journal``), now rather
    than at its first append; nothing for other storages. For a command once it is known to go
    ahead: before it, a refused one has written nothing."""
    if isinstance(storage, Journal):
        storage.file.repair()


def _last_line_damaged(path: Path) -> bool:
    """Whether the last complete line is not a journal record. Optuna's reader skips such a
    line silently when it is the last, and every read fails once a record follows it."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - _HEAD))
        tail = f.read()
    complete = tail[: tail.rfind(b"\n") + 1]
    lines = complete.split(b"\n")[:-1]
    if not lines or (len(lines) == 1 and size > len(tail)):
        return False  # no whole line in view: a huge record, left to the replay
    return not _is_record(lines[-1])


def _has_glued_records(path: Path) -> bool:
    """Whether a line holds a cut-off record and a complete one (see ``open_journal``), read
    only. Raises a ``UserError`` for a line that is no journal record at all."""
    return bool(_scan_journal(path.read_bytes(), path))


def _split_glued_records(path: Path) -> None:
    """Split every line that a cut-off record shares with a complete one: the cut-off parts go
    to a side file. The caller holds the journal's lock."""
    data = path.read_bytes()
    damaged = _scan_journal(data, path)  # read under the lock: another process may have split
    if not damaged:
        return
    torn, kept, start = [], [], 0
    for offset, split in damaged:
        kept.append(data[start:offset])
        torn.append(data[offset : offset + split])
        start = offset + split
    kept.append(data[start:])
    side = _side_file(path)
    side.write_bytes(b"\n".join(torn) + b"\n")
    write_atomic(path, lambda tmp: tmp.write_bytes(b"".join(kept)))
    _say(
        f"journal {path}: {len(damaged)} record(s) cut off by writes that did not finish, and "
        f"glued to the next record; moved the cut-off bytes to {side}, every complete record kept"
    )


def _scan_journal(data: bytes, path: Path) -> list[tuple[int, int]]:
    """(offset of the line, length of its cut-off part) of every complete line that a cut-off
    record shares with a complete one; a ``UserError`` for any other line that is no record."""
    damaged = []
    offset = 0
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        if not _is_record(line):
            split = _glued_record(line)
            if split is None:
                raise UserError(
                    f"--storage journal:///{path}: line {number} (byte {offset}) is not a "
                    "journal record: the file is damaged, or not an Optuna journal"
                )
            damaged.append((offset, split))
        offset += len(line) + 1
    return damaged


def _glued_record(line: bytes) -> int | None:
    """Where the complete record starts in a line that begins with a cut-off record, or None."""
    if not line.startswith(_RECORD_START):
        return None
    # Within a record the key's quotes are escaped, so an unescaped '{"op_code":' starts one.
    at = line.rfind(_RECORD_START)
    while at > 0:
        if _is_record(line[at:]):
            return at
        at = line.rfind(_RECORD_START, 0, at)
    return None


def move_torn_tail(path: Path) -> Path | None:
    """Move the bytes after the last complete line of a journal (a record whose write did not
    finish) to a side file next to it; returns the side file, or None when there was nothing.
    The caller holds the journal's lock, so no append is under way."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return None
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return None
        keep, position = 0, size
        while position > 0:  # the last newline, reading backwards
            start = max(0, position - _HEAD)
            f.seek(start)
            found = f.read(position - start).rfind(b"\n")
            if found >= 0:
                keep = start + found + 1
                break
            position = start
        f.seek(keep)
        torn = f.read()
        if _is_record(torn):
            # The whole record made it, only its newline did not: readers skipped it until now;
            # end it, and it counts.
            f.seek(size)
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
            return None
        side = _side_file(path)
        try:
            with open(side, "xb") as out:
                out.write(torn)
                out.flush()
                os.fsync(out.fileno())
        except OSError:
            side.unlink(missing_ok=True)  # a full disk, say: no half side file per retry
            raise
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    _say(
        f"journal {path}: its last record was cut off by a write that did not finish "
        f"({len(torn)} bytes); moved them to {side}, every complete record kept"
    )
    return side


def _side_file(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    side = path.with_name(f"{path.name}.torn-{stamp}")
    n = 1
    while side.exists():
        n += 1
        side = path.with_name(f"{path.name}.torn-{stamp}-{n}")
    return side


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class ClaimLock:
    """A lock shared by every process working on one study, on any machine.

    ``flock`` on the SQLite or journal file itself (independent of SQLite's own locks), or a
    PostgreSQL advisory lock keyed by the study name. The advisory lock belongs to a database
    session, so each claim checks a connection out of the pool (``pool_pre_ping`` replaces one
    that a server restart or an idle timeout closed during the last trial) and gives it back
    when released. ``release`` is idempotent, so the holder may release early and a ``finally``
    still works.
    """

    def __init__(self, spec: StorageSpec, storage: BaseStorage, study_name: str) -> None:
        self._held = False
        self._file = None
        self._engine = None
        self._connection = None
        if spec.path is not None:
            self._file = open(spec.path, "rb")  # noqa: SIM115 - held for the worker's lifetime
        else:
            assert isinstance(storage, RDBStorage)
            self._engine = storage.engine
            self._key = _lock_key(study_name)

    def acquire(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        else:
            from sqlalchemy import text

            assert self._engine is not None
            connection = self._engine.connect()
            try:
                connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
                connection.commit()
            except BaseException:
                # The lock may be held by this session already: never hand it back to the pool.
                connection.invalidate()
                connection.close()
                raise
            self._connection = connection
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            return
        from sqlalchemy import exc, text

        connection, self._connection = self._connection, None
        assert connection is not None
        try:
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            connection.commit()
        except exc.DBAPIError:
            # The session is gone, and the server released its locks with it; this connection
            # must not go back to the pool.
            connection.invalidate()
        finally:
            connection.close()

    def close(self) -> None:
        self.release()
        if self._file is not None:
            self._file.close()
