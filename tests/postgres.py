"""A real, throwaway PostgreSQL server for the tests of studies shared across machines.

``running_server()`` runs ``initdb`` (trust authentication) in a fresh temporary folder, starts
the server on 127.0.0.1 only, on a free port, with durability off (a test database need not
survive a crash), creates the database ``nas``, and yields the server; afterwards it stops the
server (``pg_ctl stop -m immediate``) and removes the folder, whatever happened in between.

initdb refuses to run as root, so as root the server runs as the ``postgres`` user that Debian's
package creates; as anyone else it runs as that user. Without the server binaries the fixtures
skip, naming what is missing (CI installs them and turns that skip into a failure).

Fixtures (made visible to tests/search/ by its conftest.py):

- ``postgres_server``: one server for the whole session.
- ``postgres_url``: a fresh, empty database on it for each test, as a SQLAlchemy URL.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import psycopg

SERVER_USER = "postgres"  # the superuser initdb makes, and the system user of Debian's package
START_SECONDS = 60  # how long pg_ctl waits for the server to accept connections


@dataclass(frozen=True)
class PostgresServer:
    """A running server: trust authentication, so any password is accepted and ignored."""

    port: int
    host: str = "127.0.0.1"

    def url(self, database: str = "nas", *, password: str | None = None) -> str:
        credentials = SERVER_USER + (f":{password}" if password is not None else "")
        return f"postgresql+psycopg://{credentials}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        with self._connect() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def databases(self) -> list[str]:
        with self._connect() as connection:
            rows = connection.execute("SELECT datname FROM pg_database ORDER BY datname")
            return [name for (name,) in rows]

    def _connect(self) -> psycopg.Connection:
        # Imported here, not at the top: tests/search/conftest.py imports this module, and the
        # GPU machine, which runs the gpu-marked tests of tests/search/, has no psycopg.
        import psycopg

        return psycopg.connect(
            host=self.host, port=self.port, user=SERVER_USER, dbname="postgres", autocommit=True
        )


def find_binaries() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: on PATH, else the newest of Debian's
    /usr/lib/postgresql/<version>/bin (the package does not put them on PATH)."""
    names = ("initdb", "pg_ctl", "postgres")
    on_path = shutil.which("pg_ctl")
    candidates = [Path(on_path).resolve().parent] if on_path else []

    def version(folder: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", folder.parent.name))

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for folder in candidates:
        if all(os.access(folder / n, os.X_OK) for n in names):
            return folder
    return None


def _run_as() -> pwd.struct_passwd | None:
    """The user the server must run as: ``postgres`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        pytest.skip(
            f"PostgreSQL tests run as root need the {SERVER_USER!r} system user "
            "(apt-get install postgresql creates it): initdb refuses root"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(database: str = "nas") -> Iterator[PostgresServer]:
    """Start a throwaway server with ``database`` created; stop it and delete it on exit."""
    binaries = find_binaries()
    if binaries is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH nor in "
            "/usr/lib/postgresql/*/bin: apt-get install postgresql"
        )
    account = _run_as()
    # As root, under /tmp, which the server user can traverse (TMPDIR or pytest's may not be).
    root = Path(tempfile.mkdtemp(prefix="nas-pg-", dir="/tmp" if account else None))
    data, log = root / "data", root / "server.log"
    if account is not None:
        os.chown(root, account.pw_uid, account.pw_gid)
    as_user: dict = (
        {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []} if account else {}
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", HOME=str(root))

    def pg(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(binaries / args[0]), *args[1:]],
            cwd=root,  # the server user may not be able to enter ours
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_SECONDS + 30,
            **as_user,
        )
        if check and proc.returncode != 0:
            server_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}\n{server_log}"
            )
        return proc

    try:
        pg("initdb", "-D", str(data), "-U", SERVER_USER, "-A", "trust", "-E", "UTF8",
           "--locale=C", "--no-sync")  # fmt: skip
        for attempt in itertools.count():
            port = _free_port()
            options = (
                f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off"
            )
            proc = pg("pg_ctl", "start", "-D", str(data), "-l", str(log), "-w",
                      "-t", str(START_SECONDS), "-o", options, check=attempt == 2)  # fmt: skip
            if proc.returncode == 0:
                break  # else another process took the port between the probe and the start
        server = PostgresServer(port=port)
        server.create_database(database)
        yield server
    finally:
        if (data / "postmaster.pid").exists():  # started, or half started
            pg("pg_ctl", "stop", "-D", str(data), "-m", "immediate", "-w", check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_server() as server:
        yield server


_databases = itertools.count()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database for one test, so that tests share no study."""
    return postgres_server.create_database(f"nas_{next(_databases)}")
