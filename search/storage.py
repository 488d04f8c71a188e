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
import hashlib
import sqlite3
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage

from space._io import check_writable
from space.errors import UserError

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
            return StorageSpec(url=f"{prefix}{rest}", kind=kind, path=path)  # type: ignore[arg-type]
    if text.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        rest = text.split("://", 1)[1]
        if "/" not in rest or not rest.split("/", 1)[1] or not rest.split("/", 1)[0]:
            raise UserError(f"--storage {url!r} lacks a host or a database; expected {_EXPECTED}")
        return StorageSpec(url="postgresql+psycopg://" + rest, kind="postgresql")
    raise UserError(f"--storage must be {_EXPECTED}, but got {url!r}")


def check_storage_location(spec: StorageSpec) -> None:
    """Check that the storage can be used, creating nothing: a file storage's folder must be
    writable; a database server must answer."""
    if spec.path is not None:
        if spec.path.exists() and not spec.path.is_file():
            raise UserError(f"--storage {spec.url!r}: {spec.path} exists and is not a file")
        check_writable(spec.path)
        if spec.kind == "sqlite" and spec.path.is_file() and spec.path.stat().st_size > 0:
            _check_sqlite(spec, empty_ok=True)  # Optuna would add its tables to anything
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(spec.url, connect_args={"connect_timeout": 10})
    try:
        with engine.connect():
            pass
    except ImportError as exc:
        raise UserError(f"--storage {redact(spec.url)}: {exc}") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise UserError(
            f"--storage {redact(spec.url)}: cannot connect ({_reason(exc)}); is the server up "
            "and the database created?"
        ) from None
    finally:
        engine.dispose()


def _reason(exc: Exception) -> str:
    lines = str(getattr(exc, "orig", exc)).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def open_storage(spec: StorageSpec, *, heartbeat: int, grace: int) -> BaseStorage:
    """Open (and for files, create) the storage. RDB storages get heartbeats: a trial whose
    process stopped beating for ``grace`` seconds is failed and retried once."""
    if spec.kind == "journal":
        assert spec.path is not None
        spec.path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(spec.path)))
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
            if spec.kind == "postgresql":
                raise UserError(
                    f"--storage {redact(spec.url)}: cannot connect ({_reason(exc)}); is the "
                    "server up and the database created?"
                ) from None
            raise


@contextlib.contextmanager
def _schema_lock(spec: StorageSpec) -> Iterator[None]:
    """On PostgreSQL, hold an advisory lock (one per database) while Optuna opens it.

    Opening an empty database creates Optuna's tables, and two machines that start at once
    would both create them: all but one then fail (duplicate key in ``pg_type``). SQLite is
    opened by one process at a time anyway.
    """
    if spec.kind != "postgresql":
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(
        spec.url, connect_args={"connect_timeout": 10}, poolclass=sqlalchemy.pool.NullPool
    )
    try:
        with engine.connect() as connection:
            # Autocommit: the lock belongs to the session, not to a transaction left open.
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            key = {"k": _lock_key("budget-nas: Optuna's tables")}
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), key)
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), key)
    finally:
        engine.dispose()


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
    if spec.path is not None:
        if not spec.path.is_file():
            raise UserError(f"--storage {spec.display!r}: no such file {spec.path}")
        if spec.kind == "sqlite":
            _check_sqlite(spec)
    else:
        _check_database(spec)
    try:
        storage = open_storage(spec, heartbeat=30, grace=120)
        optuna.study.get_all_study_names(storage)
    except UserError:
        raise
    except Exception as exc:  # a corrupt file or a schema of another Optuna version
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"--storage {spec.url!r}: cannot read it as an Optuna storage ({first})"
        ) from None
    return spec, storage


def _check_sqlite(spec: StorageSpec, *, empty_ok: bool = False) -> None:
    """The file must be an SQLite database with Optuna's tables (``empty_ok``: or no tables)."""
    assert spec.path is not None
    uri = spec.path.resolve().as_uri() + "?mode=ro"  # read-only: opening creates nothing
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    except sqlite3.DatabaseError as exc:
        raise UserError(f"--storage {spec.url!r}: not an SQLite database ({exc})") from None
    if not {"studies", "trials"} <= {r[0] for r in rows} and not (empty_ok and not rows):
        raise UserError(f"--storage {spec.url!r}: an SQLite file without Optuna's tables")


def _check_database(spec: StorageSpec) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(spec.url, connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as connection:
            present = sqlalchemy.inspect(connection).has_table("studies")
    except ImportError as exc:
        raise UserError(f"--storage {redact(spec.url)}: {exc}") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise UserError(
            f"--storage {redact(spec.url)}: cannot connect ({_reason(exc)}); is the server up?"
        ) from None
    finally:
        engine.dispose()
    if not present:
        raise UserError(f"--storage {redact(spec.url)}: the database holds no Optuna study")


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
