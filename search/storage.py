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

import fcntl
import hashlib
import warnings
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
        """What to pass to ``optuna-dashboard``."""
        return str(self.path) if self.kind == "journal" else self.url


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
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(spec.url, connect_args={"connect_timeout": 10})
    try:
        with engine.connect():
            pass
    except ImportError as exc:
        raise UserError(f"--storage {_redact(spec.url)}: {exc}") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise UserError(
            f"--storage {_redact(spec.url)}: cannot connect ({_reason(exc)}); is the server up "
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
            return RDBStorage(
                spec.url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=grace,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        except ImportError as exc:  # a driver the URL asks for is missing
            raise UserError(f"--storage {spec.url!r}: {exc}") from None
        except Exception as exc:  # sqlalchemy.exc.OperationalError and friends
            if spec.kind == "postgresql":
                raise UserError(
                    f"--storage {_redact(spec.url)}: cannot connect ({_reason(exc)}); is the "
                    "server up and the database created?"
                ) from None
            raise


def _redact(url: str) -> str:
    """The URL without its password."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    return f"{scheme}://{credentials}{at}{host}"


class ClaimLock:
    """A lock shared by every process working on one study, on any machine.

    ``flock`` on the SQLite or journal file itself (independent of SQLite's own locks), or a
    PostgreSQL advisory lock keyed by the study name, on a connection kept for the purpose.
    ``release`` is idempotent, so the holder may release early and a ``finally`` still works.
    """

    def __init__(self, spec: StorageSpec, storage: BaseStorage, study_name: str) -> None:
        self._held = False
        self._file = None
        self._connection = None
        if spec.path is not None:
            self._file = open(spec.path, "rb")  # noqa: SIM115 - held for the worker's lifetime
        else:
            assert isinstance(storage, RDBStorage)
            self._connection = storage.engine.connect()
            digest = hashlib.sha256(study_name.encode()).digest()[:8]
            self._key = int.from_bytes(digest, "big", signed=True)

    def acquire(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        else:
            self._advisory("SELECT pg_advisory_lock(:k)")
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        else:
            self._advisory("SELECT pg_advisory_unlock(:k)")

    def close(self) -> None:
        self.release()
        if self._file is not None:
            self._file.close()
        if self._connection is not None:
            self._connection.close()

    def _advisory(self, sql: str) -> None:
        from sqlalchemy import text

        assert self._connection is not None
        self._connection.execute(text(sql), {"k": self._key})
        self._connection.commit()
